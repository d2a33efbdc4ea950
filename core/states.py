"""Step and workflow states, and the transitions allowed between them.

Every state write goes through `check_step_transition` / `check_workflow_transition` (and the
conditional UPDATEs in `core.workflows` use `step_sources` / `workflow_sources`), so a row can never
jump from a terminal state back into play.
"""

from __future__ import annotations

from enum import StrEnum


class StepStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL_STEP

    @property
    def is_done(self) -> bool:
        """Finished in a way that lets the next step run."""
        return self in (StepStatus.COMPLETED, StepStatus.SKIPPED)


class WorkflowStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (WorkflowStatus.COMPLETED, WorkflowStatus.FAILED, WorkflowStatus.CANCELLED)

    @property
    def is_active(self) -> bool:
        return not self.is_terminal


_TERMINAL_STEP = frozenset(
    {StepStatus.COMPLETED, StepStatus.FAILED, StepStatus.CANCELLED, StepStatus.SKIPPED}
)

# processing -> processing is a resumed step (after a crash) or a progress update.
STEP_TRANSITIONS: dict[StepStatus, frozenset[StepStatus]] = {
    StepStatus.PENDING: frozenset(
        {StepStatus.PROCESSING, StepStatus.SKIPPED, StepStatus.CANCELLED, StepStatus.FAILED}
    ),
    StepStatus.PROCESSING: frozenset(
        {StepStatus.PROCESSING, StepStatus.COMPLETED, StepStatus.FAILED, StepStatus.CANCELLED}
    ),
    StepStatus.COMPLETED: frozenset(),
    StepStatus.FAILED: frozenset(),
    StepStatus.CANCELLED: frozenset(),
    StepStatus.SKIPPED: frozenset(),
}

# running -> running is a claim by a new runner (recovery after a stale heartbeat).
WORKFLOW_TRANSITIONS: dict[WorkflowStatus, frozenset[WorkflowStatus]] = {
    WorkflowStatus.QUEUED: frozenset(
        {WorkflowStatus.RUNNING, WorkflowStatus.CANCELLED, WorkflowStatus.FAILED}
    ),
    WorkflowStatus.RUNNING: frozenset(
        {
            WorkflowStatus.RUNNING,
            WorkflowStatus.COMPLETED,
            WorkflowStatus.FAILED,
            WorkflowStatus.CANCELLED,
        }
    ),
    WorkflowStatus.COMPLETED: frozenset(),
    WorkflowStatus.FAILED: frozenset(),
    WorkflowStatus.CANCELLED: frozenset(),
}


def step_sources(target: StepStatus) -> tuple[str, ...]:
    """The states a step may be in for a write of `target` to be legal."""
    return tuple(s.value for s, targets in STEP_TRANSITIONS.items() if target in targets)


def workflow_sources(target: WorkflowStatus) -> tuple[str, ...]:
    return tuple(s.value for s, targets in WORKFLOW_TRANSITIONS.items() if target in targets)


class StepName(StrEnum):
    """The six pipeline steps, in the order they run."""

    VALIDATE = "validate"
    GENERATE_IMAGE = "generate_image"
    UPLOAD_IMAGE = "upload_image"
    GENERATE_VIDEO = "generate_video"
    UPLOAD_VIDEO = "upload_video"
    FINALIZE = "finalize"


STEP_ORDER: tuple[StepName, ...] = tuple(StepName)
