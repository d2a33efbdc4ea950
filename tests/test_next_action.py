"""The pure decision of what a workflow does next, from literal snapshots (no database)."""

from datetime import UTC, datetime

from core.errors import FailureCategory
from core.pipeline import EndRun, NextStep, next_action
from core.schemas import parse_request
from core.states import STEP_ORDER, StepName, StepStatus, WorkflowStatus
from core.workflows import StepView, WorkflowView

NOW = datetime(2026, 11, 24, tzinfo=UTC)


def snapshot(
    statuses: list[str],
    *,
    status: WorkflowStatus = WorkflowStatus.RUNNING,
    cancel: bool = False,
    recoveries: int = 0,
    error: str | None = None,
) -> WorkflowView:
    steps = tuple(
        StepView(
            name=name,
            position=i,
            status=StepStatus(s),
            progress=0,
            message="",
            attempts=0,
            provider_request_id=None,
            output={},
            error_message=error if s == "failed" else None,
            error_category=None,
            started_at=None,
            finished_at=None,
            deadline_at=None,
        )
        for i, (name, s) in enumerate(zip(STEP_ORDER, statuses, strict=True))
    )
    return WorkflowView(
        id="w1",
        user_id=1,
        project_id=None,
        status=status,
        request=parse_request({"imagePrompt": "a", "videoPrompt": "b"}),
        cost_credits=10,
        cancel_requested=cancel,
        runner_id="r",
        heartbeat_at=NOW,
        recoveries=recoveries,
        error_message=None,
        error_category=None,
        created_at=NOW,
        started_at=NOW,
        finished_at=None,
        steps=steps,
    )


PENDING = ["pending"] * 6


def test_a_fresh_run_starts_with_validate():
    assert next_action(snapshot(PENDING), max_recoveries=3) == NextStep(StepName.VALIDATE)


def test_a_resumed_run_skips_completed_steps():
    statuses = ["completed", "completed", "completed", "pending", "pending", "pending"]
    assert next_action(snapshot(statuses), max_recoveries=3) == NextStep(StepName.GENERATE_VIDEO)


def test_a_step_left_processing_by_a_crash_is_run_again():
    statuses = ["completed", "processing", "pending", "pending", "pending", "pending"]
    assert next_action(snapshot(statuses), max_recoveries=3) == NextStep(StepName.GENERATE_IMAGE)


def test_all_steps_completed_completes_the_run():
    assert next_action(snapshot(["completed"] * 6), max_recoveries=3) == EndRun(
        WorkflowStatus.COMPLETED
    )


def test_a_cancel_request_wins_over_the_next_step():
    action = next_action(snapshot(PENDING, cancel=True), max_recoveries=3)
    assert action == EndRun(WorkflowStatus.CANCELLED, "cancelled by the user")


def test_a_run_restarted_too_often_fails_as_stale():
    action = next_action(snapshot(PENDING, recoveries=4), max_recoveries=3)
    assert isinstance(action, EndRun)
    assert (action.status, action.category) == (WorkflowStatus.FAILED, FailureCategory.STALE)


def test_a_failed_step_under_a_live_run_fails_the_run_with_its_message():
    statuses = ["completed", "failed", "skipped", "skipped", "skipped", "skipped"]
    action = next_action(snapshot(statuses, error="boom"), max_recoveries=3)
    assert action == EndRun(WorkflowStatus.FAILED, "boom")


def test_a_finished_run_has_nothing_left_to_do():
    for status in (WorkflowStatus.COMPLETED, WorkflowStatus.FAILED, WorkflowStatus.CANCELLED):
        assert next_action(snapshot(["completed"] * 6, status=status), max_recoveries=3) is None
