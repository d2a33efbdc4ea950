"""Watch: the seed's WorkflowVisualizer. Six steps live, overall progress, the provider's queue,
an ETA, a timeline, cancel, the result or the receipt, retry and duplicate.

The live panel is a fragment that polls the database only while the run is active; when the run
ends it reruns the whole page once, which draws the result and stops the polling.
"""

import logging

import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from core.errors import NotFoundError
from core.states import WorkflowStatus
from core.ui import format as fmt
from core.ui import live, nav, run_actions, text
from core.ui.database import guarded
from core.ui.receipt import receipt, reused_still
from core.ui.result import result_preview
from core.ui.runtime import get_runtime
from core.ui.session import inbox_changed, require_user, show_flashes
from core.ui.steps import overall, step_list
from core.ui.timeline import timeline
from core.ui.webhooks import webhooks_panel
from core.views import eta, history
from core.views.run import load_result, load_run
from core.views.watch import live_phase, receipt_for, still_reused
from core.workflows import WorkflowView

log = logging.getLogger("core.pages.watch")
POLL_S = 1.0

runtime = get_runtime()
user = require_user()
tz = fmt.zone(st.context.timezone)
workflow_id = str(st.query_params.get("id", "")).strip()
show_flashes()

if not workflow_id:
    st.title("📺 Watch a run")
    with guarded("watch picker could not read runs"), runtime.db.read() as session:
        active = history.active_runs(session, user)
        recent = history.list_runs(session, user, history.RunFilter(), limit=8).rows
    runs = active + [r for r in recent if r.id not in {a.id for a in active}]
    if not runs:
        st.info("You have no runs yet.")
        st.page_link(nav.CREATE.path, label="Create your first video", icon=":material/add:")
        st.stop()
    st.caption("Pick a run to follow live, or open one from the history.")
    for run in runs:
        pick, prompt = st.columns([1, 4], vertical_alignment="center")
        label = f"{fmt.STATUS_EMOJI[run.status]} {fmt.short_id(run.id)}"
        with prompt:
            text.literal(run.image_prompt, limit=90)
        if pick.button(label, key=f"watch_pick_{run.id}", width="stretch"):
            st.query_params["id"] = run.id
            st.rerun()
    st.stop()


def read_run() -> WorkflowView:
    with runtime.db.read() as session:
        return load_run(session, workflow_id, user)


last_key = f"watch_last_{workflow_id}"
try:
    view = read_run()
    st.session_state[last_key] = view
    db_down = False
except NotFoundError:
    st.title("📺 Watch a run")
    text.alert(
        "error",
        "There is no such run in your account: the link may be mistyped, or the run belongs to "
        "someone else. The link asked for:",
        workflow_id[:64],
        icon=":material/search_off:",
    )
    st.page_link(nav.HISTORY.path, label="Your runs", icon=":material/history:")
    st.stop()
except SQLAlchemyError:
    log.exception("App - watch page could not read workflow %s", workflow_id)
    view = st.session_state.get(last_key)
    db_down = True

toast = st.session_state.pop("watch_toast", None)
if toast == WorkflowStatus.COMPLETED:
    st.toast("Your video is ready.", icon="🎬")
elif toast in (WorkflowStatus.FAILED, WorkflowStatus.CANCELLED):
    st.toast(f"The run {toast.value}; its credits were refunded.", icon="↩️")

# -- header and actions ------------------------------------------------------------------------
head, actions = st.columns([3, 2], vertical_alignment="bottom")
with head:
    st.title(f"📺 Run {fmt.short_id(view.id) if view else ''}")
    if view is not None:
        icon, colour = fmt.WORKFLOW_STATUS_STYLE[view.status]
        st.badge(view.status.value, icon=icon, color=colour)
        created = fmt.local_time(view.created_at, tz, with_date=True)
        owner = "" if view.user_id == user.id else " · someone else's run (admin view)"
        # The id an operator looks the run up by in the tracing backend (none: tracing is off).
        traced = f" · trace `{view.trace_id}`" if view.trace_id else ""
        st.caption(f"created {created} · {view.cost_credits} credits{owner}{traced}")


with actions:
    run_actions.actions(runtime, user, view)

if view is not None:
    with st.expander("Prompts and settings", icon=":material/notes:"):
        left, right = st.columns(2)
        request = view.request
        with left:
            text.titled("Image prompt", request.image_prompt)
        left.caption(
            f"{request.image_config.style} · {request.image_config.quality} · "
            f"{request.image_config.size}"
        )
        with right:
            text.titled("Video prompt", request.video_prompt)
        audio = "with audio" if request.video_config.generate_audio else "silent"
        right.caption(
            f"{request.video_config.duration} · {request.video_config.resolution} · "
            f"{request.aspect_ratio} · {audio}"
        )

if view is not None:
    webhooks_panel(runtime, user, view, tz)

# -- the outcome ---------------------------------------------------------------------------------
if view is not None and view.status is WorkflowStatus.COMPLETED:
    try:
        with runtime.db.read() as session:
            result = load_result(session, workflow_id)
            reused = still_reused(session, view)
        result_preview(runtime, result)
        if reused is not None:
            reused_still(reused, tz)
    except SQLAlchemyError:
        log.exception("App - could not read the assets of %s", workflow_id)
        st.warning("The result could not be read right now. Reload the page in a moment.")
elif view is not None and view.status in (WorkflowStatus.FAILED, WorkflowStatus.CANCELLED):
    try:
        with runtime.db.read() as session:
            rec = receipt_for(session, view)
    except SQLAlchemyError:
        log.exception("App - could not read the receipt of %s", workflow_id)
        rec = None
    if rec is not None:
        receipt(rec, tz)

# -- the live panel ------------------------------------------------------------------------------
polling = view is None or view.status.is_active


@st.fragment(run_every=POLL_S if polling else None)
def live_panel() -> None:
    current = st.session_state.get(last_key)
    try:
        current = read_run()
        st.session_state[last_key] = current
        timings = live.step_timings(runtime)
    except NotFoundError:
        st.rerun()
    except SQLAlchemyError:
        log.warning("App - watch poll of %s failed on the database; retrying", workflow_id)
        st.warning(
            f"Lost contact with the database. Showing the last known state and trying again "
            f"every {POLL_S:.0f} s.",
            icon=":material/sync_problem:",
        )
        timings = eta.StepTimings({}, 0)
    if current is None:
        return
    if polling and current.status.is_terminal:
        st.session_state["watch_toast"] = current.status
        st.rerun()
    if inbox_changed(user):
        st.rerun()  # the sidebar's bell catches up on this poll
    waiting = live.waiting_on_slots(runtime, current)
    overall(current, live_phase(current, busy_slots=waiting), eta.eta_s(current, timings))
    steps, chart = st.columns([3, 2], gap="medium")
    with steps:
        step_list(current, tz)
    with chart:
        st.markdown("**Timeline**")
        timeline(current)


if db_down and view is None:
    st.warning(
        f"Lost contact with the database. Trying again every {POLL_S:.0f} s.",
        icon=":material/sync_problem:",
    )
live_panel()
