"""What a user can do with a run from its watch page: cancel it (after a confirmation dialog)
while it is active; retry it, or duplicate it into the create page, once it has ended."""

from __future__ import annotations

import logging
import uuid

import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from core import launch
from core.auth import UserView
from core.errors import (
    BudgetExceededError,
    InsufficientCreditsError,
    NotFoundError,
    RequestValidationError,
)
from core.runtime import Runtime
from core.schemas import parse_request
from core.states import WorkflowStatus
from core.ui import nav, text
from core.ui.session import flash
from core.workflows import WorkflowView

log = logging.getLogger(__name__)

CONFIRM_KEY = "watch_confirm_cancel"


def actions(runtime: Runtime, user: UserView, view: WorkflowView | None) -> None:
    if view is None:
        return
    with st.container(horizontal=True, horizontal_alignment="right"):
        if view.status.is_active:
            _cancel_button(runtime, user, view)
        else:
            _restart_buttons(runtime, user, view)


def _cancel_button(runtime: Runtime, user: UserView, view: WorkflowView) -> None:
    st.button(
        "Cancel run",
        key="watch_cancel",
        icon=":material/stop_circle:",
        disabled=view.cancel_requested,
        help="Already asked to stop" if view.cancel_requested else None,
        on_click=_open_confirmation,
        args=(view.id,),
    )
    # The open dialog is remembered in the session, so every run redraws it until answered.
    if st.session_state.get(CONFIRM_KEY) == view.id:
        _confirm_cancel(runtime, user, view.id)


def _open_confirmation(workflow_id: str) -> None:
    st.session_state[CONFIRM_KEY] = workflow_id


def _close_confirmation() -> None:
    st.session_state.pop(CONFIRM_KEY, None)


@st.dialog("Cancel this run?", on_dismiss=_close_confirmation)
def _confirm_cancel(runtime: Runtime, user: UserView, workflow_id: str) -> None:
    st.write(
        "The run stops at its next check. If the video provider is already working on it, it "
        "is asked to stop too. The credits for the run come back to the balance."
    )
    yes, no = st.columns(2)
    if yes.button("Yes, cancel the run", key="watch_cancel_confirm", type="primary"):
        try:
            runtime.cancel(workflow_id, user)
        except NotFoundError:
            flash("That run is gone.", "warning")
        except SQLAlchemyError:
            log.exception("App - cancel of %s failed on the database", workflow_id)
            flash("The cancellation could not be sent (database); try again.", "warning")
        else:
            flash("Cancellation sent. The run stops at its next check.", "info")
        _close_confirmation()
        st.rerun()
    if no.button("Keep it running", key="watch_cancel_keep"):
        _close_confirmation()
        st.rerun()


def _restart_buttons(runtime: Runtime, user: UserView, view: WorkflowView) -> None:
    again = "Run again" if view.status is WorkflowStatus.COMPLETED else "Retry"
    # One click spends credits, so the cost is on the button itself (like Start).
    if st.button(
        f"{again} · {view.cost_credits} cr",
        key="watch_retry",
        icon=":material/replay:",
        help="Start a new run with the same prompts and settings at once",
    ):
        _retry(runtime, user, view)
    if st.button(
        "Duplicate",
        key="watch_duplicate",
        icon=":material/content_copy:",
        help="Open the create page with these prompts and settings, to edit first",
    ):
        st.switch_page(nav.CREATE.path, query_params={"from": view.id})
    st.page_link(nav.CREATE.path, label="New run", icon=":material/add:")


def _retry(runtime: Runtime, user: UserView, view: WorkflowView) -> None:
    """A new run with the same request, at once; one key per page visit, so a double click
    starts it once."""
    key_name = f"watch_retry_key_{view.id}"
    key = st.session_state.setdefault(key_name, uuid.uuid4().hex)
    payload = launch.rerun_payload(view.request, same_owner=view.user_id == user.id)
    try:
        new_id, _ = runtime.start_workflow(user, parse_request(payload), client_key=key)
    except (InsufficientCreditsError, BudgetExceededError, RequestValidationError) as exc:
        text.alert("error", "Not started, nothing charged:", str(exc))
        return
    except SQLAlchemyError:
        log.exception("App - retry of %s failed on the database", view.id)
        st.error("The run could not be started right now (database). Nothing was charged.")
        return
    st.session_state.pop(key_name, None)
    st.switch_page(nav.WATCH.path, query_params={"id": new_id})
