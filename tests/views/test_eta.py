"""Step timings over recent completed runs, and the ETA of a run in flight."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from core import workflows
from core.models import utcnow
from core.states import StepName, StepStatus, WorkflowStatus
from core.views import eta
from tests.views.runs import finish, start


def test_step_timings_are_medians_over_recent_completed_runs(db, make_user):
    user = make_user()
    for video_s in (10.0, 20.0, 60.0):
        finish(db, start(db, user), {StepName.GENERATE_VIDEO: video_s})
    with db.read() as session:
        timings = eta.step_timings(session)
    assert timings.runs == 3
    assert timings.medians[StepName.GENERATE_VIDEO] == pytest.approx(20.0)
    assert timings.medians[StepName.VALIDATE] == pytest.approx(1.0)


def test_the_eta_adds_what_is_left_of_the_running_step_to_the_steps_after_it(db, make_user):
    user = make_user()
    workflow_id = start(db, user)
    with db.read() as session:
        view = workflows.load_workflow(session, workflow_id)
    medians = {step: 10.0 for step in StepName}
    timings = eta.StepTimings(medians, runs=5)
    assert eta.eta_s(view, timings) == pytest.approx(60.0)
    now = utcnow()
    steps = list(view.steps)
    steps[0] = replace(steps[0], status=StepStatus.COMPLETED)
    steps[1] = replace(
        steps[1], status=StepStatus.PROCESSING, started_at=now - timedelta(seconds=4), progress=50
    )
    running = replace(view, status=WorkflowStatus.RUNNING, steps=tuple(steps))
    assert eta.eta_s(running, timings, now) == pytest.approx(6.0 + 40.0)
    slow = list(steps)
    slow[1] = replace(steps[1], started_at=now - timedelta(seconds=30), progress=75)
    overdue = replace(running, steps=tuple(slow))
    assert eta.eta_s(overdue, timings, now) == pytest.approx(10.0 + 40.0)  # 30 s at 75 %
    assert eta.eta_s(view, eta.StepTimings({}, 0)) is None
    assert eta.eta_s(replace(view, status=WorkflowStatus.COMPLETED), timings) is None
