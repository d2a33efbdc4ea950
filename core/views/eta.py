"""Timing queries over this installation's own runs: step-duration medians, and the ETA of a
run in flight computed from them (pure)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.models import Workflow, WorkflowStep, utcnow
from core.states import StepName, StepStatus, WorkflowStatus
from core.workflows import WorkflowView

ETA_SAMPLE = 50  # the most recent completed runs the medians come from


@dataclass(frozen=True)
class StepTimings:
    """Median seconds per step over `runs` recent completed runs (empty when there are none)."""

    medians: dict[StepName, float]
    runs: int

    @property
    def total_s(self) -> float:
        return sum(self.medians.values())


def step_timings(session: Session, *, sample: int = ETA_SAMPLE) -> StepTimings:
    recent = (
        select(Workflow.id)
        .where(Workflow.status == WorkflowStatus.COMPLETED.value)
        .order_by(Workflow.finished_at.desc())
        .limit(sample)
        .subquery()
    )
    rows = session.execute(
        select(
            WorkflowStep.workflow_id,
            WorkflowStep.name,
            WorkflowStep.started_at,
            WorkflowStep.finished_at,
        ).where(
            WorkflowStep.workflow_id.in_(select(recent.c.id)),
            WorkflowStep.status == StepStatus.COMPLETED.value,
            WorkflowStep.started_at.is_not(None),
            WorkflowStep.finished_at.is_not(None),
        )
    )
    durations: dict[StepName, list[float]] = {}
    runs: set[str] = set()
    for workflow_id, name, started, finished in rows:
        runs.add(workflow_id)
        durations.setdefault(StepName(name), []).append((finished - started).total_seconds())
    medians = {step: statistics.median(values) for step, values in durations.items()}
    return StepTimings(medians=medians, runs=len(runs))


def eta_s(view: WorkflowView, timings: StepTimings, now: datetime | None = None) -> float | None:
    """Seconds until `view` should finish: the median of each step still to run, plus what is
    left of the running step (its median minus the time it has had; once past its median, what
    its own progress suggests). None without timings for every step left, or once it ended."""
    if view.status.is_terminal:
        return None
    now = now or utcnow()
    remaining = 0.0
    for step in view.steps:
        if step.status.is_done:
            continue
        median = timings.medians.get(step.name)
        if median is None:
            return None
        if step.status is StepStatus.PROCESSING and step.started_at is not None:
            spent = (now - step.started_at).total_seconds()
            left = median - spent
            if left <= 0 and 0 < step.progress < 100:
                left = spent * (100 - step.progress) / step.progress
            remaining += max(left, 0.0)
        else:
            remaining += median
    return remaining
