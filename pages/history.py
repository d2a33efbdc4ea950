"""History: the user's runs (everyone's for an admin who asks) with filters, search, paging and a
CSV export; each run opens the watch page. Runs in flight update live."""

import logging
from datetime import timedelta

import pandas as pd
import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from core import projects
from core import prompts as prompt_rules
from core.clock import utcnow
from core.states import WorkflowStatus
from core.ui import format as fmt
from core.ui import nav, text
from core.ui.database import guarded
from core.ui.runtime import get_runtime
from core.ui.session import inbox_changed, require_user, show_flashes
from core.views import history
from core.views.history import RunFilter, RunRow

log = logging.getLogger("core.pages.history")
PAGE_SIZE = 20
PERIODS = {"any": "Any time", "1d": "Last 24 hours", "7d": "Last 7 days", "30d": "Last 30 days"}
REFRESH_S = 2.0

runtime = get_runtime()
user = require_user()
tz = fmt.zone(st.context.timezone)
batch = st.query_params.get("batch")

st.title("🗂️ History")
show_flashes()

with guarded("history could not read projects"), runtime.db.read() as session:
    project_names = {p.id: p.name for p in projects.list_projects(session, user.id)}

search_col, status_col, project_col, period_col = st.columns([2.2, 2, 1.4, 1.2])
search = search_col.text_input(
    "Search", key="history_search", placeholder="words in a prompt, or a run id"
)
statuses = status_col.multiselect(
    "Status",
    list(WorkflowStatus),
    key="history_status",
    format_func=lambda s: f"{fmt.STATUS_EMOJI[s]} {s.value}",
    placeholder="All statuses",
)
project_id = project_col.selectbox(
    "Project",
    list(project_names),
    key="history_project",
    format_func=project_names.get,
    placeholder="All projects",
)
period = period_col.selectbox(
    "Created", list(PERIODS), key="history_period", format_func=PERIODS.get
)
everyone = user.is_admin and st.toggle("Everyone's runs (admin)", key="history_everyone")
if batch:
    note, clear = st.columns([4, 1], vertical_alignment="center")
    note.info("Showing the runs of one batch.", icon=":material/filter_alt:")
    if clear.button("Show all runs", key="history_clear_batch"):
        del st.query_params["batch"]
        st.rerun()

days = {"1d": 1, "7d": 7, "30d": 30}.get(period)
flt = RunFilter(
    statuses=tuple(statuses),
    project_id=project_id,
    search=search,
    since=utcnow() - timedelta(days=days) if days else None,
    everyone=everyone,
    batch=batch,
)
filter_key = repr(flt.__dict__ | {"since": period})
if st.session_state.get("history_filter_key") != filter_key:
    st.session_state["history_filter_key"] = filter_key
    st.session_state["history_page"] = 1


def fetch(page: int) -> tuple[history.RunPage, dict[WorkflowStatus, int]]:
    with runtime.db.read() as session:
        runs = history.list_runs(session, user, flt, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)
        counts = history.status_counts(session, user, flt)
    return runs, counts


def draw_row(run: RunRow, varies: str = "") -> None:
    with st.container(border=True, key=f"history_row_{run.id}"):
        status, prompts, facts, action = st.columns([1.1, 4.5, 2, 1], vertical_alignment="center")
        icon, colour = fmt.WORKFLOW_STATUS_STYLE[run.status]
        status.badge(run.status.value, icon=icon, color=colour)
        status.caption(fmt.short_id(run.id))
        detail = fmt.shorten(run.video_prompt, 110)
        if run.project_name:
            detail = f"📁 {run.project_name} · {detail}"
        if everyone:
            detail = f"👤 {run.owner_email} · {detail}"
        with prompts:
            text.literal(run.image_prompt, limit=110)
            text.literal(detail)
            if varies:  # the shortened prompts of a batch's runs can look alike
                text.literal(f"varies: {varies}")
        facts.caption(
            f"{fmt.ago(run.created_at)} · {fmt.local_time(run.created_at, tz, with_date=True)}  \n"
            f"⏱ {fmt.duration(run.duration_s)} · 💳 {run.cost_credits} cr"
        )
        if action.button("Open", key=f"history_open_{run.id}", icon=":material/open_in_new:"):
            st.switch_page(nav.WATCH.path, query_params={"id": run.id})


with guarded("history could not read runs"):
    first_page, first_counts = fetch(st.session_state.get("history_page", 1))
polling = any(r.status.is_active for r in first_page.rows)


@st.fragment(run_every=REFRESH_S if polling else None)
def run_list() -> None:
    page = st.session_state.get("history_page", 1)
    try:
        runs, counts = fetch(page)
    except SQLAlchemyError:
        log.warning("App - history refresh failed on the database; retrying")
        st.warning("Lost contact with the database; trying again.", icon=":material/sync_problem:")
        return
    if polling and not any(r.status.is_active for r in runs.rows):
        st.rerun()  # everything on this page has ended: redraw once without polling
    if inbox_changed(user):
        st.rerun()  # the sidebar's bell catches up on this poll
    metrics = st.columns(len(WorkflowStatus))
    for column, status in zip(metrics, WorkflowStatus, strict=True):
        column.metric(f"{fmt.STATUS_EMOJI[status]} {status.value}", counts[status])
    if not runs.rows:
        st.info("No runs match these filters." if runs.total == 0 else "No runs on this page.")
        return
    varies = prompt_rules.varying_parts([r.video_prompt for r in runs.rows]) if batch else []
    for run, difference in zip(runs.rows, varies or [""] * len(runs.rows), strict=True):
        draw_row(run, difference)
    pages = max(1, -(-runs.total // PAGE_SIZE))
    st.caption(f"{fmt.plural(runs.total, 'run')} · page {page} of {pages}")


run_list()

pages = max(1, -(-first_page.total // PAGE_SIZE))
page = st.session_state.get("history_page", 1)
footer = st.container(horizontal=True, vertical_alignment="center")
if footer.button(
    "Previous", key="history_prev", disabled=page <= 1, icon=":material/chevron_left:"
):
    st.session_state["history_page"] = page - 1
    st.rerun()
if footer.button(
    "Next", key="history_next", disabled=page >= pages, icon=":material/chevron_right:"
):
    st.session_state["history_page"] = page + 1
    st.rerun()
every: list[RunRow] = []
if first_page.total:
    try:
        with runtime.db.read() as session:
            every = history.list_runs(session, user, flt, limit=5000).rows
    except SQLAlchemyError:
        log.exception("App - history export could not read runs")
if every:
    table = pd.DataFrame(
        {
            "id": [r.id for r in every],
            "status": [r.status.value for r in every],
            "created_at": [r.created_at.isoformat() for r in every],
            "duration_s": [r.duration_s for r in every],
            "cost_credits": [r.cost_credits for r in every],
            "project": [r.project_name or "" for r in every],
            "owner": [r.owner_email for r in every],
            "image_prompt": [r.image_prompt for r in every],
            "video_prompt": [r.video_prompt for r in every],
            "error": [r.error_message or "" for r in every],
        }
    )
    footer.download_button(
        "Export CSV",
        table.to_csv(index=False).encode("utf-8"),
        file_name="reelforge-history.csv",
        mime="text/csv",
        key="history_export",
        icon=":material/download:",
        on_click="ignore",
    )
