"""Reading a run for the watch page, with the timings its ETA comes from (cached briefly: they
move slowly and every open watch page polls)."""

from __future__ import annotations

import streamlit as st

from core import workflows
from core.auth import UserView
from core.runtime import Runtime
from core.views import eta
from core.views.eta import StepTimings
from core.workflows import AssetView, WorkflowView


def load_run(runtime: Runtime, workflow_id: str, viewer: UserView) -> WorkflowView:
    """Raises NotFoundError for a missing run or someone else's (they look the same)."""
    with runtime.db.read() as session:
        return workflows.workflow_for(session, workflow_id, viewer)


def load_assets(runtime: Runtime, workflow_id: str) -> list[AssetView]:
    with runtime.db.read() as session:
        return workflows.assets_of(session, workflow_id)


@st.cache_data(ttl=60, max_entries=4, show_spinner=False)
def _timings(_runtime: Runtime, database_url: str) -> StepTimings:
    with _runtime.db.read() as session:
        return eta.step_timings(session)


def step_timings(runtime: Runtime) -> StepTimings:
    return _timings(runtime, runtime.settings.resolved_database_url)
