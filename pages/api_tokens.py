"""API tokens: create one (its secret shown once), list them with when each was last used, and
revoke one after a confirmation; an admin also sees every user's tokens. Everything goes through
core.tokens; names are the user's text and are shown literally."""

from datetime import datetime

import pandas as pd
import streamlit as st

from core import tokens
from core.clock import utcnow
from core.errors import NotFoundError, PermissionDeniedError, RequestValidationError
from core.tokens import TokenView
from core.ui import database, text
from core.ui import format as fmt
from core.ui.runtime import get_runtime
from core.ui.session import flash, require_user, show_flashes
from core.ui.webhook_secret import webhook_secret

EXPIRY_CHOICES = {
    None: "Never",
    7: "In 7 days",
    30: "In 30 days",
    90: "In 90 days",
    365: "In a year",
}
CONFIRM_KEY = "tokens_confirm_revoke"

runtime = get_runtime()
user = require_user()
tz = fmt.zone(st.context.timezone)
now = utcnow()

st.title("🔑 API tokens")
st.caption(
    "A token lets a script use the HTTP API as you: it sees and starts your runs and spends "
    "your credits. Send it as `Authorization: Bearer <token>`; the API's own page is at /docs."
)
show_flashes()


def when(moment: datetime | None, never: str = "never") -> str:
    return never if moment is None else fmt.local_time(moment, tz, with_date=True)


def table(listed: list[TokenView], owners: list[str] | None = None) -> pd.DataFrame:
    rows = [
        {
            "name": t.name or "(unnamed)",
            "prefix": f"{t.prefix}…",
            "created": when(t.created_at),
            "last used": when(t.last_used_at),
            "expires": when(t.expires_at),
            "revoked": when(t.revoked_at, "–"),
            "state": t.state(now),
        }
        for t in listed
    ]
    frame = pd.DataFrame(
        rows, columns=["name", "prefix", "created", "last used", "expires", "revoked", "state"]
    )
    if owners is not None:
        frame.insert(0, "owner", owners)
    return frame


# -- Create -----------------------------------------------------------------------------------
st.subheader("Create a token")
with st.form("tokens_create", clear_on_submit=True):
    name = st.text_input(
        "Name",
        key="tokens_create_name",
        max_chars=tokens.NAME_MAX_CHARS,
        placeholder="e.g. nightly batch script",
    )
    expires_days = st.selectbox(
        "Expires", list(EXPIRY_CHOICES), format_func=EXPIRY_CHOICES.get, key="tokens_create_expiry"
    )
    create = st.form_submit_button("Create token", key="tokens_create_submit", type="primary")
if create:
    try:
        saved, issued = database.change(
            runtime,
            lambda s: tokens.create_token(s, user.id, name=name, expires_days=expires_days),
            what="tokens could not create a token",
        )
    except RequestValidationError as exc:
        problems = "; ".join(f"{f} {m}" for f, m in exc.problems.items())
        text.alert("error", "Not created:", problems)
    else:
        if saved and issued is not None:
            st.success(
                "Token created. Copy it now (the button at the right of the box): it is shown "
                "only this once, and only its hash is kept.",
                icon=":material/key:",
            )
            st.code(issued.secret, language=None)

# -- Your tokens ------------------------------------------------------------------------------
st.subheader("Your tokens")
with database.guarded("tokens could not read tokens"), runtime.db.read() as session:
    mine = tokens.list_tokens(session, user.id)
if not mine:
    st.info("You have no tokens yet.")
else:
    st.dataframe(table(mine), hide_index=True)


def _open_confirmation(token_id: int) -> None:
    st.session_state[CONFIRM_KEY] = token_id


def _close_confirmation() -> None:
    st.session_state.pop(CONFIRM_KEY, None)


@st.dialog("Revoke this token?", on_dismiss=_close_confirmation)
def confirm_revoke(token: TokenView) -> None:
    st.write(
        "Every script that uses it is refused from its next request on. This cannot be undone."
    )
    text.literal(f"{token.name or '(unnamed)'} · {token.prefix}…")
    yes, no = st.columns(2)
    if yes.button("Yes, revoke it", key="tokens_revoke_confirm", type="primary"):
        try:
            saved, _ = database.change(
                runtime,
                lambda s: tokens.revoke_for(s, user, token.id),
                what="tokens could not revoke a token",
            )
        except (NotFoundError, PermissionDeniedError):
            flash("That token is gone.", "warning")
        else:
            if saved:
                flash("Token revoked.", "info", f"{token.name or '(unnamed)'} · {token.prefix}…")
        _close_confirmation()
        st.rerun()
    if no.button("Keep it", key="tokens_revoke_keep"):
        _close_confirmation()
        st.rerun()


active = {t.id: t for t in mine if t.is_usable(now)}
if active:
    pick, button = st.columns([3, 1], vertical_alignment="bottom")
    chosen = pick.selectbox(
        "Token to revoke",
        list(active),
        format_func=lambda token_id: (
            f"{active[token_id].name or '(unnamed)'} · {active[token_id].prefix}…"
        ),
        key="tokens_revoke_choice",
    )
    button.button(
        "Revoke…",
        key="tokens_revoke",
        icon=":material/block:",
        on_click=_open_confirmation,
        args=(chosen,),
    )
    if st.session_state.get(CONFIRM_KEY) in active:
        confirm_revoke(active[st.session_state[CONFIRM_KEY]])

# -- Webhooks ---------------------------------------------------------------------------------
st.subheader("Webhook signing secret")
st.caption(
    "A run started with a `webhookUrl` (here or over the API) sends its events there, signed "
    "with this secret."
)
webhook_secret(runtime, user, key="tokens_webhook")

# -- Every user's tokens (admins) -------------------------------------------------------------
if user.is_admin:
    st.subheader("Every user's tokens")
    with database.guarded("tokens could not read every token"), runtime.db.read() as session:
        everyone = tokens.list_all_tokens(session, user)
    st.dataframe(
        table([o.token for o in everyone], [o.owner_email for o in everyone]),
        hide_index=True,
    )
