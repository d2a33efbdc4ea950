"""The step timings the watch page's ETA comes from, cached briefly: they move slowly and every
open watch page polls."""

from __future__ import annotations

import streamlit as st

from core.runtime import Runtime
from core.views import eta
from core.views.eta import StepTimings
from core.views.watch import busy_slots
from core.workflows import WorkflowView


@st.cache_data(ttl=60, max_entries=4, show_spinner=False)
def _timings(_runtime: Runtime, database_url: str) -> StepTimings:
    with _runtime.db.read() as session:
        return eta.step_timings(session)


def step_timings(runtime: Runtime) -> StepTimings:
    return _timings(runtime, runtime.settings.resolved_database_url)


def waiting_on_slots(runtime: Runtime, view: WorkflowView) -> int | None:
    """How many of the user's runs hold the slots a queued run waits for (None: not waiting)."""
    if not view.status.is_active or view.started_at is not None:
        return None
    with runtime.db.read() as session:
        return busy_slots(session, view, runtime.settings.max_active_runs_per_user)
