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

pages = [
    st.Page(spec.path, title=spec.title, icon=spec.icon, url_path=spec.url_path, default=i == 0)
    for i, spec in enumerate(nav.pages_for(user is not None and user.is_admin))
]

if user is None:
    # Every page stays routable (a watch link survives signing in); the gate draws instead.
    st.navigation(pages, position="hidden")
    session.login_gate()
    st.stop()

sections: dict[str, list] = {}
for spec, page in zip(nav.pages_for(user.is_admin), pages, strict=True):
    sections.setdefault(spec.section, []).append(page)
current = st.navigation(sections)
session.sidebar(user)
current.run()
