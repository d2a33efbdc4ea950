"""Moving a run's steps from a test, through the runner's own writes (core.run_writes: the
same statement a runner sends), inside the test's transaction."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from core import run_writes, webhooks, workflows
from core.clock import utcnow
from core.run_writes import Applied, HeldRun, StateChange
from core.states import StepName, StepStatus
from core.workflows import WorkflowView


class _InTransaction:
    """A HeldRun's writer that applies its changes on the test's session."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def apply(self, change: StateChange) -> Applied:
        return run_writes.apply_on(self._session.connection(), change)

    def cancel_requested(self, workflow_id: str) -> bool:
        return run_writes.cancel_requested(self._session.connection(), workflow_id)


def held_by(session: Session, workflow_id: str, runner_id: str) -> tuple[HeldRun, WorkflowView]:
    view = workflows.load_workflow(session, workflow_id)
    held = HeldRun(
        writer=_InTransaction(session),
        workflow_id=view.id,
        user_id=view.user_id,
        runner_id=runner_id,
        worker_id=view.worker_id,
        started_at=view.started_at,
        destinations=webhooks.destinations_of(view.request, view.global_webhook_url),
    )
    return held, view


def start_step(
    session: Session,
    workflow_id: str,
    step: StepName,
    runner_id: str,
    *,
    deadline_at: datetime,
    worker_id: str | None = None,
) -> None:
    held, view = held_by(session, workflow_id, runner_id)
    start = run_writes.started(
        view.step(step), now=utcnow(), deadline_at=deadline_at, worker_id=worker_id
    )
    held.advance([start])


def complete_step(
    session: Session, workflow_id: str, step: StepName, runner_id: str, output: dict[str, Any]
) -> None:
    held, view = held_by(session, workflow_id, runner_id)
    held.advance([run_writes.completed(view.step(step), output, now=utcnow())])


def write_step(
    session: Session,
    workflow_id: str,
    step: StepName,
    target: StepStatus,
    runner_id: str,
    **values: Any,
) -> None:
    """The step moved to `target` (or updated in place) with `values`, as a runner writes it."""
    held, view = held_by(session, workflow_id, runner_id)
    held.advance([replace(view.step(step), status=target, **values)])
