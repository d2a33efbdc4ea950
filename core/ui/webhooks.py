"""The watch page's "Webhooks" panel: each message of the run (event, address, attempts, last
answer, next try) with a Redeliver button, and the owner's signing secret."""

from __future__ import annotations

import logging
from zoneinfo import ZoneInfo

import pandas as pd
import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from core import webhooks
from core.auth import UserView
from core.errors import NotFoundError
from core.runtime import Runtime
from core.ui import format as fmt
from core.ui.webhook_secret import webhook_secret
from core.views.run import run_deliveries
from core.webhooks import DeliveryStatus, DeliveryView
from core.workflows import WorkflowView

log = logging.getLogger(__name__)
POLL_S = 2.0


def webhooks_panel(
    runtime: Runtime, user: UserView, view: WorkflowView, tz: ZoneInfo | None
) -> None:
    """The panel, for a run with a webhook of its own (or, for an admin, any delivery). While
    the run is active or a message is still pending, the list refreshes itself."""
    deliveries = _read(runtime, view.id, user)
    if not deliveries and not view.request.webhook_url:
        return
    pending = any(d.status == DeliveryStatus.PENDING for d in deliveries)
    live = view.status.is_active or pending
    with st.expander("Webhooks", icon=":material/webhook:"):
        st.fragment(run_every=POLL_S if live else None)(_messages)(runtime, user, view.id, tz)
        if view.user_id == user.id:
            webhook_secret(runtime, user, key="watch_webhook_secret")


def _read(runtime: Runtime, workflow_id: str, user: UserView) -> list[DeliveryView]:
    try:
        with runtime.db.read() as session:
            return run_deliveries(session, workflow_id, user)
    except (SQLAlchemyError, NotFoundError):
        log.exception("App - could not read the webhook deliveries of %s", workflow_id)
        return []


def _messages(runtime: Runtime, user: UserView, workflow_id: str, tz: ZoneInfo | None) -> None:
    deliveries = _read(runtime, workflow_id, user)
    if not deliveries:
        st.caption("No event has been sent yet.")
        return
    delivered = sum(d.status == DeliveryStatus.DELIVERED for d in deliveries)
    st.caption(f"{fmt.plural(len(deliveries), 'message')}, {delivered} delivered")
    st.dataframe(_table(deliveries, tz), hide_index=True, width="stretch")
    _redeliver(runtime, user, workflow_id, deliveries)


def _table(deliveries: list[DeliveryView], tz: ZoneInfo | None) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "webhook-id": d.id,
            "event": d.event,
            "url": d.url,
            "status": d.status,
            "attempts": d.attempts,
            "last response": _last_response(d),
            "next try": fmt.local_time(d.next_attempt_at, tz)
            if d.status == DeliveryStatus.PENDING
            else "–",
        }
        for d in deliveries
    )


def _last_response(delivery: DeliveryView) -> str:
    if delivery.last_status_code is not None:
        return f"HTTP {delivery.last_status_code}"
    return delivery.last_error or "–"


def _redeliver(
    runtime: Runtime, user: UserView, workflow_id: str, deliveries: list[DeliveryView]
) -> None:
    """One more attempt of the picked message, now, with the same webhook-id."""
    names = {d.id: f"{d.event} · {d.id} · {d.status}" for d in deliveries}
    pick, send = st.columns([3, 1], vertical_alignment="bottom")
    chosen = pick.selectbox(
        "Delivery", list(names), format_func=names.get, key="watch_redeliver_pick"
    )
    if not send.button("Redeliver", key="watch_redeliver", icon=":material/send:"):
        return
    try:
        with runtime.db.begin() as session:
            webhooks.redeliver(session, workflow_id, chosen, user)
    except NotFoundError:
        st.warning("That delivery is gone.")
    except SQLAlchemyError:
        log.exception("App - redeliver of %s failed on the database", chosen)
        st.error("The delivery could not be queued right now (database); try again.")
    else:
        st.success("Queued: it goes out again in a moment, with the same webhook-id.")
