"""The six steps of a run as the seed's WorkflowVisualizer drew them: icon, status, a progress
bar, the step's message, attempts and timestamps; plus the overall progress line."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import streamlit as st

from core.states import StepStatus, WorkflowStatus
from core.ui import format as fmt
from core.ui import text
from core.views.watch import LivePhase
from core.workflows import StepView, WorkflowView


def overall(view: WorkflowView, phase: LivePhase, eta_s: float | None) -> None:
    """The run's progress bar, what it is doing now, and when it should be done."""
    with st.container(key="watch_overall"):
        st.progress(view.progress / 100, text=_overall_text(view, phase))
        facts = [f"elapsed {fmt.duration(view.duration_s)}"] if view.started_at else []
        if eta_s is not None:
            facts.append(f"about {fmt.duration(eta_s)} left (from this installation's runs)")
        elif view.status.is_active:
            facts.append("no estimate yet: it comes after the first finished run")
        st.caption(" · ".join(facts))


def _overall_text(view: WorkflowView, phase: LivePhase) -> str:
    """ "42% · Generating the first frame" while a run goes; a failed or cancelled one says where
    it stopped and how many steps it finished, never a percentage counting skipped steps."""
    if view.status not in (WorkflowStatus.FAILED, WorkflowStatus.CANCELLED):
        return f"**{view.progress}%** · {phase.label}"
    ended = view.ended_at_step
    where = f" at {fmt.STEP_LABELS[ended.name][1]}" if ended else " before any step"
    return f"{phase.label}{where} · **{view.steps_done} of {len(view.steps)} steps done**"


def step_list(view: WorkflowView, tz: ZoneInfo | None) -> None:
    for step in view.steps:
        _step_row(step, tz)


def _step_row(step: StepView, tz: ZoneInfo | None) -> None:
    emoji, label = fmt.STEP_LABELS[step.name]
    icon, colour = fmt.STEP_STATUS_STYLE[step.status]
    # The keyed container gives the browser test a stable handle: .st-key-watch_step_<name>.
    with st.container(key=f"watch_step_{step.name.value}", border=True):
        head, bar = st.columns([2, 3], vertical_alignment="center")
        head.markdown(f"{emoji} **{label}**  \n:{colour}-badge[{icon} {step.status.value}]")
        done = 100 if step.status is StepStatus.COMPLETED else step.progress
        with bar:
            st.progress(done / 100)
            # The message may be the provider's own words (its logs): shown literally.
            text.literal(_message(step))
            st.caption(_meta(step, tz))
        if step.status is StepStatus.FAILED and step.error_message:
            text.alert("error", "The step failed:", step.error_message, icon=":material/error:")
        elif step.status is StepStatus.CANCELLED and step.error_message:
            text.alert("warning", "The step stopped:", step.error_message, icon=":material/cancel:")


def _message(step: StepView) -> str:
    if step.status is StepStatus.PENDING:
        return "waiting"
    return fmt.shorten(step.message or step.status.value, 90)


def _meta(step: StepView, tz: ZoneInfo | None) -> str:
    parts = []
    if step.attempts:
        parts.append(f"attempt {step.attempts}")
    if step.started_at:
        parts.append(f"started {fmt.local_time(step.started_at, tz)}")
    if step.finished_at and step.status is not StepStatus.SKIPPED:
        parts.append(f"finished {fmt.local_time(step.finished_at, tz)}")
    if step.started_at:
        parts.append(fmt.duration(step.duration_s))
    if step.worker_id:
        parts.append(f"on {step.worker_id}")
    return " · ".join(parts) or "not started"
