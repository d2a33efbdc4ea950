"""The step timings the watch page's ETA comes from, cached briefly: they move slowly and every
open watch page polls."""

from __future__ import annotations

import streamlit as st

from core.runtime import Runtime
from core.views import eta
from core.views.eta import StepTimings


@st.cache_data(ttl=60, max_entries=4, show_spinner=False)
def _timings(_runtime: Runtime, database_url: str) -> StepTimings:
    with _runtime.db.read() as session:
        return eta.step_timings(session)


def step_timings(runtime: Runtime) -> StepTimings:
    return _timings(runtime, runtime.settings.resolved_database_url)
