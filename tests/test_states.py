from core.states import (
    STEP_TRANSITIONS,
    WORKFLOW_TRANSITIONS,
    StepStatus,
    WorkflowStatus,
    step_sources,
    workflow_sources,
)


def test_terminal_steps_never_move_again():
    for status in StepStatus:
        if status.is_terminal:
            assert STEP_TRANSITIONS[status] == frozenset()


def test_terminal_workflows_never_move_again():
    for status in WorkflowStatus:
        if status.is_terminal:
            assert WORKFLOW_TRANSITIONS[status] == frozenset()


def test_a_step_completes_only_from_processing():
    assert step_sources(StepStatus.COMPLETED) == ("processing",)


def test_a_step_is_skipped_only_while_pending():
    assert step_sources(StepStatus.SKIPPED) == ("pending",)


def test_a_workflow_is_cancelled_from_queued_or_running():
    assert set(workflow_sources(WorkflowStatus.CANCELLED)) == {"queued", "running"}


def test_completed_and_skipped_let_the_next_step_run():
    assert {s for s in StepStatus if s.is_done} == {StepStatus.COMPLETED, StepStatus.SKIPPED}
