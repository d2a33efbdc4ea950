"""Runs for the view tests: started through the engine's own functions, and walked through
their steps with chosen durations."""

from __future__ import annotations

import uuid
from datetime import timedelta

from core import workflows
from core.models import Asset, WorkflowStep, utcnow
from core.schemas import parse_request
from core.states import StepName, StepStatus
from tests import stepping

REQUEST = {"imagePrompt": "a red fox in snow", "videoPrompt": "slow pan"}
RUNNER = "runner-test"


def start(db, user, client_key: str | None = None, **overrides) -> str:
    workflow_id = workflows.start_workflow(
        db,
        user_id=user.id,
        request=parse_request({**REQUEST, **overrides}),
        client_key=client_key or uuid.uuid4().hex,
        actor=user.email,
    ).workflow_id
    return workflow_id


def finish(db, workflow_id: str, seconds: dict[StepName, float], *, status=StepStatus.COMPLETED):
    """Walk a run through its steps with the given durations (by rewriting the timestamps)."""
    with db.begin() as session:
        workflows.claim(session, workflow_id, RUNNER, stale_before=utcnow())
        deadline = utcnow() + timedelta(hours=1)
        for step in StepName:
            stepping.start_step(session, workflow_id, step, RUNNER, deadline_at=deadline)
            stepping.complete_step(session, workflow_id, step, RUNNER, {})
        workflows.complete_run(session, workflow_id, RUNNER)
        for row in session.query(WorkflowStep).filter_by(workflow_id=workflow_id):
            started = utcnow() - timedelta(minutes=5)
            row.started_at = started
            row.finished_at = started + timedelta(seconds=seconds.get(StepName(row.name), 1.0))


def add_files(db, workflow_id: str, user, kinds: tuple[str, ...]) -> None:
    """Stored files of the given kinds ("image", "video"), keyed k/<kind>."""
    with db.begin() as session:
        for kind in kinds:
            session.add(
                Asset(
                    workflow_id=workflow_id,
                    user_id=user.id,
                    kind=kind,
                    storage_backend="local",
                    storage_key=f"k/{kind}",
                    content_type="x",
                    size_bytes=1,
                    sha256="0" * 64,
                )
            )
