"""The watch view: the live phase of a run, and the receipt of a failed or cancelled one."""

from __future__ import annotations

from dataclasses import replace

from core import workflows
from core.models import utcnow
from core.states import StepName, StepStatus, WorkflowStatus
from core.views import watch
from tests import stepping
from tests.views.runs import RUNNER, start


def _with_video_step(view, output):
    steps = tuple(
        replace(s, status=StepStatus.COMPLETED) if s.position < 3 else s for s in view.steps
    )
    steps = tuple(
        replace(s, status=StepStatus.PROCESSING, output=output)
        if s.name is StepName.GENERATE_VIDEO
        else s
        for s in steps
    )
    return replace(view, status=WorkflowStatus.RUNNING, steps=steps)


def test_the_live_phase_keeps_the_providers_queue_apart(db, make_user):
    user = make_user()
    with db.read() as session:
        view = workflows.load_workflow(session, start(db, user))
    assert watch.live_phase(view).phase is watch.Phase.WAITING
    queued = watch.live_phase(_with_video_step(view, {"phase": "queued", "queue_position": 3}))
    assert (queued.phase, queued.queue_position) == (watch.Phase.PROVIDER_QUEUE, 3)
    assert queued.label == "In the video provider's queue (3 ahead)"
    first = watch.live_phase(_with_video_step(view, {"phase": "queued", "queue_position": 0}))
    assert first.label == "In the video provider's queue (next in line)"
    generating = watch.live_phase(_with_video_step(view, {"phase": "in_progress"}))
    assert generating.phase is watch.Phase.GENERATING_VIDEO
    assert watch.live_phase(_with_video_step(view, {})).phase is watch.Phase.SUBMITTING
    cancelling = replace(_with_video_step(view, {}), cancel_requested=True)
    assert watch.live_phase(cancelling).phase is watch.Phase.CANCELLING


def test_a_cancelled_queued_run_has_a_receipt_with_its_refund(db, make_user):
    user = make_user()
    workflow_id = start(db, user)
    view = workflows.request_cancel(db, workflow_id, user)
    with db.read() as session:
        receipt = watch.receipt_for(session, view)
    assert receipt.status is WorkflowStatus.CANCELLED
    assert receipt.reason == "cancelled by the user"
    assert receipt.refunded == view.cost_credits == receipt.entry.amount
    assert receipt.provider_cancel is None and receipt.step is not None


def test_a_failed_run_names_its_step_and_the_providers_verdict(db, make_user):
    user = make_user()
    workflow_id = start(db, user)
    with db.begin() as session:
        workflows.claim(session, workflow_id, RUNNER, stale_before=utcnow())
        stepping.start_step(session, workflow_id, StepName.VALIDATE, RUNNER, deadline_at=utcnow())
        workflows.record_provider_cancel(session, workflow_id, RUNNER, confirmed=False)
        workflows.end_run(
            session,
            workflow_id,
            RUNNER,
            WorkflowStatus.CANCELLED,
            message="cancelled by the user; the provider did not confirm the cancellation",
            category=None,
        )
    with db.read() as session:
        view = workflows.load_workflow(session, workflow_id)
        receipt = watch.receipt_for(session, view)
    assert receipt.step is StepName.VALIDATE
    assert receipt.provider_cancel is False
    with db.read() as session:
        assert watch.receipt_for(session, replace(view, status=WorkflowStatus.COMPLETED)) is None
