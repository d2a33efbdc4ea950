"""A user's webhook signing secret: hidden until revealed, and rotated on request (the old one
keeps signing alongside for a day, so receivers can switch without missing a message)."""

from __future__ import annotations

import logging

import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from core import webhooks
from core.auth import UserView
from core.runtime import Runtime

log = logging.getLogger(__name__)


def webhook_secret(runtime: Runtime, user: UserView, *, key: str) -> None:
    """The secret panel; `key` prefixes its widget keys (one per page)."""
    st.markdown("**Signing secret**")
    st.caption(
        "Deliveries are signed as Standard Webhooks specifies (`webhook-id`, "
        "`webhook-timestamp`, `webhook-signature`): verify them with this secret."
    )
    reveal, rotate = st.columns(2)
    shown = reveal.toggle("Reveal", key=f"{key}_reveal")
    if rotate.button("Rotate", key=f"{key}_rotate", icon=":material/autorenew:"):
        try:
            with runtime.db.begin() as session:
                webhooks.rotate_secret(session, user.id)
        except SQLAlchemyError:
            log.exception("App - could not rotate the webhook secret of user %s", user.id)
            st.error("The secret could not be rotated right now (database); try again.")
        else:
            st.success("New secret made. The old one also signs for the next 24 hours.")
    if shown:
        with runtime.db.begin() as session:
            secret = webhooks.signing_secret(session, user.id)
        st.code(secret, language=None)
