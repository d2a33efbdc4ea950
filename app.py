"""Reelforge's Streamlit entry point: the engine (settings, schema upgrade, background runs, the
first admin), the login gate, and the menu of pages this user may see."""

import logging

import streamlit as st

from core.ui import nav, session
from core.ui.database import DB_DOWN
from core.ui.runtime import get_services

log = logging.getLogger("core.app")

st.set_page_config(page_title="Reelforge", page_icon="🎬", layout="wide")

try:
    get_services()
except Exception:
    log.exception("App - the engine did not start")
    st.error(
        "Reelforge could not start its engine (database or provider settings). "
        "The details are in the terminal that runs the app."
    )
    st.stop()

user = None
try:
    user = session.current_user()
except Exception:
    log.exception("App - could not read the signed-in account")
    st.error(DB_DOWN)
    st.stop()


def page(spec: nav.PageSpec, *, hidden: bool = False) -> st.Page:
    return st.Page(
        spec.path,
        title=spec.title,
        icon=spec.icon,
        url_path=spec.url_path,
        default=spec is nav.CREATE,
        visibility="hidden" if hidden else "visible",
    )


if user is None:
    # Every page stays routable, admin pages too (a bookmark survives signing in, and lands on
    # the page and query it asked for); the gate draws instead.
    st.navigation([page(spec) for spec in nav.routable_pages()], position="hidden")
    session.login_gate()
    st.stop()

sections: dict[str, list] = {}
menu = nav.pages_for(user.is_admin)
for spec in nav.routable_pages():
    # A page outside this user's menu still answers its URL, hidden: a non-admin's bookmark of
    # an admin page gets that page's own refusal instead of a "Page not found" pop-up.
    sections.setdefault(spec.section, []).append(page(spec, hidden=spec not in menu))
current = st.navigation(sections)
status = session.sidebar(user)
try:
    current.run()
finally:
    # Also when the page stops early (st.stop): the sidebar always gets its balance.
    session.account_status(status, user)
