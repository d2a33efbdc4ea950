"""Who is signed in: the login gate (local accounts, and OIDC through st.login when [auth] is in
secrets.toml), the signed-in user of each run, and the sidebar with the balance and sign-out.

Session state holds only the signed-in user's id: every run re-reads the account, so a changed
balance or a deactivated account shows at once.
"""

from __future__ import annotations

import json
import logging
import time

import streamlit as st
from sqlalchemy.exc import SQLAlchemyError
from streamlit.delta_generator import DeltaGenerator

from core import accounts, auth, inbox, sessions
from core.auth import UserView
from core.ui import nav, text
from core.ui.database import guarded
from core.ui.runtime import AppServices, get_services
from core.views import history

log = logging.getLogger(__name__)

USER_KEY = "auth_user_id"
OIDC_KEY = "auth_via_oidc"
SIGNED_IN_AT_KEY = "auth_signed_in_at"
SEEN_AT_KEY = "auth_seen_at"
TOKEN_KEY = "auth_session_token"
# The cookie to write on the next drawn run ("" deletes it): st.rerun right after signing in
# would discard a script drawn in the same run.
COOKIE_WRITE_KEY = "auth_cookie_write"
# Set by signing out: the connection still carries the old cookie, which must not sign back in.
SIGNED_OUT_KEY = "auth_signed_out"
# The unread count the sidebar's bell shows, for the pages' polls to compare with.
INBOX_SHOWN_KEY = "inbox_unread_shown"


# ---------------------------------------------------------------------------------------------
# OIDC


def oidc_providers() -> dict[str, str]:
    """{provider name or "": button label} from the [auth] table of secrets.toml; empty when
    OIDC is not configured. A single unnamed provider is the "" entry."""
    try:
        if "auth" not in st.secrets:
            return {}
        config = st.secrets["auth"].to_dict()
    except Exception:  # noqa: BLE001 - no secrets file at all
        return {}
    if "client_id" in config:
        return {"": "Sign in with single sign-on"}
    return {
        name: f"Sign in with {name.replace('_', ' ').title()}"
        for name, value in config.items()
        if isinstance(value, dict) and "client_id" in value
    }


def _oidc_identity() -> tuple[str | None, str | None]:
    try:
        if not st.user.is_logged_in:
            return None, None
        return st.user.get("email"), st.user.get("name")
    except Exception:  # noqa: BLE001 - st.user without [auth]: nobody is signed in that way
        return None, None


# ---------------------------------------------------------------------------------------------
# The signed-in user


def current_user(services: AppServices | None = None) -> UserView | None:
    services = services or get_services()
    db = services.runtime.db
    user_id = st.session_state.get(USER_KEY)
    if user_id is None and oidc_providers():
        email, name = _oidc_identity()
        if email:
            user = accounts.account_for_identity(db, services.runtime.settings, email, name)
            if user is None:
                st.session_state["auth_refused"] = "That account is not active."
                return None
            st.session_state[USER_KEY], st.session_state[OIDC_KEY] = user.id, True
            return user
    if user_id is None:
        user_id = _from_cookie(services)
    if user_id is None:
        return None
    if _expired(services):
        return None
    with db.read() as session:
        user = auth.get_user(session, user_id)
    if user is None or not user.is_active:
        sign_out(reason="Your account is no longer active.")
        return None
    return user if _session_live(services) else None


def _from_cookie(services: AppServices) -> int | None:
    """Resume the session a reload, a new tab or a bookmark brings back in its cookie."""
    cookie = st.context.cookies.get(sessions.COOKIE_NAME)
    # (Under AppTest there is no browser: the cookies are a stand-in object, not strings.)
    if not isinstance(cookie, str) or not cookie or st.session_state.get(SIGNED_OUT_KEY):
        return None
    runtime = services.runtime
    secret = sessions.signing_secret(runtime.db, runtime.settings)
    token = sessions.unsign(cookie, secret, runtime.settings.session_max_age_s)
    resumed = None
    if token is not None:
        with runtime.db.begin() as session:
            resumed = sessions.resume(session, token, runtime.settings)
    if resumed is None:
        st.session_state[COOKIE_WRITE_KEY] = ""
        st.session_state["auth_refused"] = "Your session ended. Sign in again."
        return None
    st.session_state[USER_KEY], st.session_state[TOKEN_KEY] = resumed.user_id, token
    st.session_state[SIGNED_IN_AT_KEY] = resumed.signed_in_at.timestamp()
    st.session_state[SEEN_AT_KEY] = time.time()
    return resumed.user_id


def _session_live(services: AppServices) -> bool:
    """False once this browser's session was signed out elsewhere ("sign out everywhere", an
    admin's deactivation) or expired on the server."""
    token = st.session_state.get(TOKEN_KEY)
    if token is None:
        return True  # signed in through OIDC, whose own cookie keeps the session
    with services.runtime.db.begin() as session:
        live = sessions.resume(session, token, services.runtime.settings) is not None
    if not live:
        sign_out(reason="Your session ended. Sign in again.")
    return live


def _expired(services: AppServices) -> bool:
    """Sessions end after SESSION_IDLE_TIMEOUT_S without a page run, or SESSION_MAX_AGE_S after
    signing in, whichever comes first; the user is asked to sign in again."""
    settings, now = services.runtime.settings, time.time()
    signed_in_at = st.session_state.setdefault(SIGNED_IN_AT_KEY, now)
    seen_at = st.session_state.get(SEEN_AT_KEY, now)
    idle = now - seen_at > settings.session_idle_timeout_s
    if idle or now - signed_in_at > settings.session_max_age_s:
        sign_out(reason="Your session expired. Sign in again.")
        return True
    st.session_state[SEEN_AT_KEY] = now
    return False


def require_user() -> UserView:
    """The signed-in user, or the login form and a stop: every page checks for itself."""
    with guarded("could not read the signed-in account"):
        user = current_user()
    if user is None:
        login_gate()
        st.stop()
    return user


def require_admin() -> UserView:
    """An admin page's own check: a non-admin's menu never lists it, but a URL can be typed."""
    user = require_user()
    if not user.is_admin:
        st.error("This page is for administrators.")
        st.stop()
    return user


def sign_out(*, everywhere: bool = False, reason: str | None = None) -> None:
    """End this browser's session (or every session of the user) and forget the cookie;
    `reason` is shown on the sign-in form."""
    via_oidc = st.session_state.get(OIDC_KEY)
    token, user_id = st.session_state.get(TOKEN_KEY), st.session_state.get(USER_KEY)
    if token is not None or (everywhere and user_id is not None):
        with get_services().runtime.db.begin() as session:
            if everywhere and user_id is not None:
                sessions.revoke_all(session, user_id)
            else:
                sessions.revoke(session, token)
    for key in list(st.session_state.keys()):
        del st.session_state[key]
    st.session_state[COOKIE_WRITE_KEY], st.session_state[SIGNED_OUT_KEY] = "", True
    if reason:
        st.session_state["auth_refused"] = reason
    if via_oidc:
        st.logout()


def write_cookie() -> None:
    """Write (or delete) the session cookie asked for by the last sign-in or sign-out. The
    script runs in the page itself, so the cookie belongs to the app's own origin and comes
    back with the next connection, where st.context.cookies reads it."""
    if COOKIE_WRITE_KEY not in st.session_state:
        return
    value = st.session_state.pop(COOKIE_WRITE_KEY)
    max_age = round(get_services().runtime.settings.session_max_age_s) if value else 0
    cookie = f"{sessions.COOKIE_NAME}={value}; Max-Age={max_age}; Path=/; SameSite=Strict"
    st.html(
        "<script>document.cookie = "
        f"{json.dumps(cookie)} + (location.protocol === 'https:' ? '; Secure' : '');</script>",
        unsafe_allow_javascript=True,
    )


# ---------------------------------------------------------------------------------------------
# Widgets


def login_gate() -> None:
    """The sign-in screen, drawn in place of whatever page the URL asked for (so the URL, e.g. a
    watch link, still holds after signing in)."""
    services = get_services()
    write_cookie()
    _, middle, _ = st.columns([1, 1.4, 1])
    with middle:
        st.title("🎬 Reelforge")
        st.caption("Two prompts in, a short video out. Sign in to continue.")
        refused = st.session_state.pop("auth_refused", None)
        if refused:
            st.error(refused)
        with st.form("login_form", border=True):
            email = st.text_input("Email", key="login_email", autocomplete="username")
            password = st.text_input(
                "Password", type="password", key="login_password", autocomplete="current-password"
            )
            submitted = st.form_submit_button(
                "Sign in", type="primary", icon=":material/login:", width="stretch"
            )
        if submitted:
            _password_sign_in(services, email, password)
        providers = oidc_providers()
        if providers:
            st.caption("or")
            for name, label in providers.items():
                if st.button(
                    label,
                    key=f"login_oidc_{name or 'default'}",
                    icon=":material/key:",
                    width="stretch",
                ):
                    _oidc_sign_in(name)
        _bootstrap_hint(services)


def _password_sign_in(services: AppServices, email: str, password: str) -> None:
    if not email.strip() or not password:
        st.error("Enter your email and password.")
        return
    try:
        result = accounts.sign_in(services.runtime.db, services.throttle, email, password)
    except SQLAlchemyError:
        log.exception("App - sign-in could not reach the database")
        st.error("The database is not answering right now. Try again in a moment.")
        return
    if result.user is not None:
        _start_session(services, result.user.id)
        st.rerun()
    if result.throttled:
        st.error(
            f"Too many failed sign-ins for this account. Try again in "
            f"{max(1, round(result.retry_after_s))} s."
        )
    else:
        st.error("Wrong email or password.")


def _start_session(services: AppServices, user_id: int) -> None:
    runtime = services.runtime
    with runtime.db.begin() as session:
        token = sessions.open_session(session, user_id)
    secret = sessions.signing_secret(runtime.db, runtime.settings)
    st.session_state[USER_KEY], st.session_state[TOKEN_KEY] = user_id, token
    st.session_state[SIGNED_IN_AT_KEY] = st.session_state[SEEN_AT_KEY] = time.time()
    st.session_state[COOKIE_WRITE_KEY] = sessions.sign(token, secret)
    st.session_state.pop(SIGNED_OUT_KEY, None)


def _oidc_sign_in(provider: str) -> None:
    try:
        st.login(provider or None)
    except Exception:  # noqa: BLE001 - e.g. Authlib missing or [auth] incomplete
        log.exception("App - single sign-on could not start")
        st.error("Single sign-on is not available right now; sign in with your password.")


def _bootstrap_hint(services: AppServices) -> None:
    """Until someone has signed in, where the first admin's password is: `make run` creates the
    admin and prints its password before Streamlit starts, so the app may not have made it."""
    boot, settings = services.bootstrap, services.runtime.settings
    if boot is not None and boot.problem:
        st.warning(f"No admin account could be created: {boot.problem}.")
        return
    try:
        with services.runtime.db.read() as session:
            if sessions.anyone_signed_in(session):
                return
    except SQLAlchemyError:
        return
    if settings.admin_password is not None:
        where = "its password is the one set in ADMIN_PASSWORD"
    else:
        where = (
            "its password was printed once in the terminal that started Reelforge (by "
            "`make run` or `python -m core users bootstrap-admin`, above Streamlit's address)"
        )
    email = settings.admin_email or accounts.DEFAULT_ADMIN_EMAIL
    st.info(f"First start: the first admin account is {email}; {where}.", icon=":material/key:")


def sidebar(user: UserView) -> DeltaGenerator:
    """The signed-in user and sign-out; returns the slot for `account_status`, which the app
    fills after the page has run."""
    with st.sidebar:
        text.literal(user.display_name)
        text.literal(user.email)
        if user.is_admin:
            st.badge("admin", icon=":material/shield_person:", color="violet")
        status = st.container()
        write_cookie()
        with st.container(horizontal=True):
            if st.button("Sign out", key="app_sign_out", icon=":material/logout:"):
                sign_out()
                st.rerun()
            if st.button(
                "Sign out everywhere",
                key="app_sign_out_everywhere",
                help="Ends your sessions in every browser and tab",
            ):
                sign_out(everywhere=True)
                st.rerun()
    return status


def account_status(slot: DeltaGenerator, user: UserView) -> None:
    """The balance, the inbox's bell and the runs in flight, read after the page's own reads
    (and again whenever a page's poll sees a run end and reruns the app): a run the page shows
    ended (refunded) is never still "in progress" here beside the old balance and count."""
    unread = 0
    try:
        with get_services().runtime.db.read() as session:
            user = auth.get_user(session, user.id) or user
            active = history.active_runs(session, user, limit=5)
            unread = inbox.unread_count(session, user.id)
    except SQLAlchemyError:
        active = []
    st.session_state[INBOX_SHOWN_KEY] = unread
    with slot:
        st.metric("Credit balance", f"{user.balance:,}")
        st.page_link(
            nav.INBOX.path,
            label=f"Inbox · {unread:,} unread" if unread else "Inbox",
            icon=":material/notifications_active:" if unread else ":material/notifications:",
        )
        if active:
            st.caption(f"{len(active)} run{'s' if len(active) > 1 else ''} in progress")
            for run in active:
                st.page_link(
                    nav.WATCH.path,
                    label=f"{run.id[:8]} · {run.status.value}",
                    icon=":material/play_circle:",
                    query_params={"id": run.id},
                )


def inbox_changed(user: UserView) -> bool:
    """For a page's polling fragment: True once when the unread count has moved from what the
    bell shows. A fragment cannot draw into the sidebar, so on True it reruns the app and the
    bell catches up on that same poll."""
    try:
        with get_services().runtime.db.read() as session:
            count = inbox.unread_count(session, user.id)
    except SQLAlchemyError:
        return False
    shown = st.session_state.get(INBOX_SHOWN_KEY)
    st.session_state[INBOX_SHOWN_KEY] = count  # once per change, even where no sidebar is drawn
    return shown is not None and shown != count


def flash(message: str, kind: str = "success", detail: str | None = None) -> None:
    """A message for the next page to show (kept across st.switch_page); `detail` is user text,
    shown literally."""
    st.session_state.setdefault("flash", []).append((kind, message, detail))


def show_flashes() -> None:
    for kind, message, detail in st.session_state.pop("flash", []):
        text.alert(kind, message, detail)
