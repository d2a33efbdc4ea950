"""Each run's event log: one row per state change, appended in the transaction that makes the
change (every write path in core.workflows calls `append_event`) and numbered per run 1, 2, 3...
with no gap and no double. The API's stream sends these rows as Server-Sent Events with `seq` as
the event id, so a client that reconnects with Last-Event-ID misses nothing and sees nothing twice.

Payloads are the state as the status endpoint shows it (camelCase, the wire's names): a `step`
event carries the whole step, not a delta, so applying one twice is harmless.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from sqlalchemy import Integer, and_, cast, func, insert, select, update
from sqlalchemy.orm import Session

from core.clock import utcnow
from core.models import RunEvent, Workflow
from core.states import StepStatus, WorkflowStatus


class EventKind(StrEnum):
    RUN = "run"  # the run itself: queued, claimed (or resumed) by a runner, cancel requested
    STEP = "step"  # a step started, reported progress, or ended (completed, failed, ...)
    FINAL = "final"  # the run ended: always its last event

    @property
    def is_final(self) -> bool:
        return self is EventKind.FINAL


@dataclass(frozen=True)
class RunEventView:
    workflow_id: str
    seq: int
    kind: EventKind
    payload: dict[str, Any]
    created_at: datetime


def append_event(
    session: Session, workflow_id: str, kind: EventKind, payload: dict[str, Any]
) -> int:
    """Append one event to the run's log in the caller's transaction. Returns its seq.

    The seq comes from bumping `workflows.last_event_seq` in one UPDATE ... RETURNING: the
    row lock it takes (Postgres; SQLite's write transactions are serial anyway) queues
    concurrent writers of the same run until commit, so seqs are gap-free, unique, and
    committed in order, which is what lets the stream read a run's log by `seq > cursor`.
    """
    seq = session.execute(
        update(Workflow)
        .where(Workflow.id == workflow_id)
        .values(last_event_seq=Workflow.last_event_seq + 1)
        .returning(Workflow.last_event_seq),
        execution_options={"synchronize_session": False},
    ).scalar_one()
    session.connection().execute(
        insert(RunEvent.__table__),
        {
            "workflow_id": workflow_id,
            "seq": seq,
            "kind": kind.value,
            "payload": payload,
            "created_at": utcnow(),
        },
    )
    return seq


# -- payloads -----------------------------------------------------------------------------------


class StepState(Protocol):
    """A step as a RETURNING row or a StepView has it."""

    name: str
    status: str
    progress: int
    message: str
    error_message: str | None
    attempts: int
    started_at: datetime | None
    finished_at: datetime | None


def step_payload(step: StepState) -> dict[str, Any]:
    """A step as the status endpoint shows it (its `steps[]` entries are built from this)."""
    status = StepStatus(step.status)
    return {
        "name": str(step.name),
        "state": status.value,
        "progress": 100 if status.is_done else step.progress,
        "message": step.error_message or step.message,
        "attempts": step.attempts,
        "startedAt": _iso(step.started_at),
        "finishedAt": _iso(step.finished_at),
    }


def run_payload(status: WorkflowStatus, **details: Any) -> dict[str, Any]:
    """The run's own state; `details` are camelCase fields that changed with it."""
    return {"status": status.value, **details}


def final_payload(
    status: WorkflowStatus,
    *,
    refunded: int = 0,
    message: str | None = None,
    code: str | None = None,
    step: str | None = None,
) -> dict[str, Any]:
    """How the run ended: its error as the status endpoint's `error`, and the credits refunded."""
    error = None if status is WorkflowStatus.COMPLETED else {"code": code, "message": message}
    if error is not None:
        error["step"] = step
    return {"status": status.value, "error": error, "refundedCredits": refunded}


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


# -- reading ------------------------------------------------------------------------------------


def events_after(session: Session, cursors: Mapping[str, int]) -> list[RunEventView]:
    """Every run's events after its cursor (workflow id -> last seq seen), in one query, in
    (run, seq) order. Per-run cursors, not one global id: ids are handed out at insert but
    committed in any order across runs, so `id > last seen` could skip a late commit.

    The cursors travel as one JSON object that the database unpacks into (key, value) rows, so
    the statement is the same for any number of runs: an OR of one term per run cost about 25
    times the CPU to build and plan at 500 runs."""
    if not cursors:
        return []
    unpack = (
        func.json_each_text if session.get_bind().dialect.name == "postgresql" else func.json_each
    )
    cursor = unpack(json.dumps(cursors)).table_valued("key", "value").alias("cursor")
    rows = session.execute(
        select(
            RunEvent.workflow_id,
            RunEvent.seq,
            RunEvent.kind,
            RunEvent.payload,
            RunEvent.created_at,
        )
        .join(
            cursor,
            and_(
                RunEvent.workflow_id == cursor.c.key, RunEvent.seq > cast(cursor.c.value, Integer)
            ),
        )
        .order_by(RunEvent.workflow_id, RunEvent.seq)
    )
    return [
        RunEventView(r.workflow_id, r.seq, EventKind(r.kind), r.payload, r.created_at) for r in rows
    ]


def last_seq(session: Session, workflow_id: str) -> int:
    """The seq of the run's newest event (0: none yet, or no such run)."""
    seq = session.execute(
        select(Workflow.last_event_seq).where(Workflow.id == workflow_id)
    ).scalar()
    return seq or 0
