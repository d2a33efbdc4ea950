"""The runner's writes: each state change of a run it holds is one statement.

A runner is its run's only writer (its claim fences every other runner out; the one write from
outside, the cancel flag, is read back by every change), so it knows the run as it stands and
says in Python what a change writes: the steps it touches as whole rows, the run's own columns,
the events of the run's log, and the provider calls, assets, webhook deliveries and inbox entries
that go with it. `RunWriter.apply` writes such a StateChange:

- on Postgres as ONE statement, its own transaction (data-modifying CTEs; a claim adds two row
  locks in front, sent in the same round trip; a new run's claim rides on its start's round
  trip instead, `claim_of_new_run`). Every write in it hangs on the fence: the run
  still held by this runner (or, for a claim, still queued with its user under their limit of
  running runs) and every step in a state its transition allows. A change that loses its fence
  writes nothing at all.
- on SQLite, in-process, where a round trip is a function call: the same writes in order in one
  transaction, checked one by one.

The statements are built once, here, with bound parameters, and on Postgres prepared once per
connection (their planning cost more than their execution); the ORM is for pages and admin.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from enum import Enum
from typing import Any, Protocol

from sqlalchemy import Connection, Row, bindparam, func, insert, select, update
from sqlalchemy.dialects import sqlite

from core import inbox, webhooks
from core.clock import utcnow
from core.db import Bound, Prepared, Statements, json_text
from core.errors import InvalidTransitionError
from core.models import (
    ApiCall,
    Asset,
    Notification,
    RunEvent,
    WebhookDelivery,
    Workflow,
    WorkflowStep,
)
from core.run_events import EventKind, final_payload, run_payload, step_payload
from core.states import StepStatus, WorkflowStatus, step_sources
from core.workflows import STEP_COLUMNS, ApiCallRecord, StepView, WorkflowView


@dataclass(frozen=True)
class RunColumns:
    """The run's own columns as a change leaves them."""

    status: WorkflowStatus
    runner_id: str | None
    worker_id: str | None
    heartbeat_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True)
class StateChange:
    """Everything one state change of a run writes. `claim_limit` set: the change is the
    run's claim, fenced on the run still being queued and its user having fewer than that many
    runs running; otherwise it is fenced on the run being held by `runner_id`."""

    workflow_id: str
    runner_id: str
    run: RunColumns
    steps: tuple[StepView, ...]
    events: tuple[tuple[EventKind, dict[str, Any]], ...]
    calls: Sequence[ApiCallRecord] = ()
    assets: Sequence[dict[str, Any]] = ()
    deliveries: Sequence[dict[str, Any]] = ()
    notices: Sequence[dict[str, Any]] = ()
    claim_limit: int | None = None
    user_id: int | None = None  # needed by a claim (its limit is per user)
    now: datetime = field(default_factory=utcnow)


@dataclass(frozen=True)
class Applied:
    """Whether the change's fence held (False: nothing was written), and the run's cancel
    flag as it stood."""

    written: bool
    cancel_requested: bool


class RunWriter:
    """Applies state changes, each one statement, on core.db.Statements."""

    def __init__(self, statements: Statements) -> None:
        self._statements = statements

    def apply(self, change: StateChange) -> Applied:
        return self._statements.run(lambda connection: apply_on(connection, change))

    def cancel_requested(self, workflow_id: str) -> bool:
        """The run's cancel flag as it stands now (one read)."""
        return self._statements.run(lambda connection: cancel_requested(connection, workflow_id))


# ---------------------------------------------------------------------------------------------
# Postgres: one statement


_CLAIM_LOCKS = """
SELECT 1 FROM workflows WHERE id = %(workflow_id)s AND status = 'queued' FOR UPDATE;
SELECT 1 FROM users WHERE id = %(user_id)s FOR UPDATE;
"""
# The locks above come first, in the order a cancel and a refund take them (run, then user), so
# two claims of one user's runs count running runs one after the other; each statement of the
# round trip sees what committed before it started, so the count below is current.
_CLAIMED = """
held AS (
    SELECT id, cancel_requested FROM workflows AS w
    WHERE id = %(workflow_id)s AND status = 'queued'
      AND (SELECT count(*) FROM workflows AS r
           WHERE r.user_id = w.user_id AND r.status = 'running') < %(claim_limit)s
    FOR UPDATE
)"""
_HELD = """
held AS (
    SELECT id, cancel_requested FROM workflows
    WHERE id = %(workflow_id)s AND runner_id = %(runner_id)s AND status = 'running'
    FOR UPDATE
)"""
_WRITES = """,
step_rows AS (
    SELECT * FROM json_to_recordset(CAST(%(steps)s AS json)) AS r(
        name text, sources text[], status text, progress int, message text, attempts int,
        provider_request_id text, output json, error_message text, error_category text,
        started_at timestamptz, finished_at timestamptz, deadline_at timestamptz, worker_id text)
),
written AS (
    UPDATE workflow_steps AS s SET
        status = r.status, progress = r.progress, message = r.message, attempts = r.attempts,
        provider_request_id = r.provider_request_id, output = r.output,
        error_message = r.error_message, error_category = r.error_category,
        started_at = r.started_at, finished_at = r.finished_at, deadline_at = r.deadline_at,
        worker_id = r.worker_id
    FROM step_rows AS r, held
    WHERE s.workflow_id = held.id AND s.name = r.name AND s.status = ANY (r.sources)
    RETURNING s.name
),
fenced AS (
    SELECT EXISTS (SELECT 1 FROM held) AND count(*) = %(step_count)s AS ok FROM written
),
run AS (
    UPDATE workflows SET
        status = %(status)s, runner_id = %(run_runner_id)s, worker_id = %(worker_id)s,
        heartbeat_at = %(heartbeat_at)s, started_at = %(started_at)s,
        finished_at = %(finished_at)s, last_event_seq = last_event_seq + %(event_count)s
    WHERE id = %(workflow_id)s AND (SELECT ok FROM fenced)
    RETURNING last_event_seq
),
events AS (
    INSERT INTO run_events (workflow_id, seq, kind, payload, created_at)
    SELECT %(workflow_id)s, run.last_event_seq - %(event_count)s + e.n,
           e.event ->> 'kind', e.event -> 'payload', %(now)s
    FROM run, json_array_elements(CAST(%(events)s AS json)) WITH ORDINALITY AS e(event, n)
),
calls AS (
    INSERT INTO api_calls (workflow_id, step, provider, operation, attempt, started_at,
                           duration_ms, outcome, status_code, error_code, error_message, cost_usd)
    SELECT c.workflow_id, c.step, c.provider, c.operation, c.attempt, c.started_at,
           c.duration_ms, c.outcome, c.status_code, c.error_code, c.error_message, c.cost_usd
    FROM run, json_populate_recordset(NULL::api_calls, CAST(%(calls)s AS json)) AS c
),
assets AS (
    INSERT INTO assets (workflow_id, user_id, kind, storage_backend, storage_key, content_type,
                        size_bytes, sha256, width, height, duration_s, created_at)
    SELECT a.workflow_id, a.user_id, a.kind, a.storage_backend, a.storage_key, a.content_type,
           a.size_bytes, a.sha256, a.width, a.height, a.duration_s, %(now)s
    FROM run, json_populate_recordset(NULL::assets, CAST(%(assets)s AS json)) AS a
    ON CONFLICT (workflow_id, kind) DO UPDATE SET
        storage_backend = EXCLUDED.storage_backend, storage_key = EXCLUDED.storage_key,
        content_type = EXCLUDED.content_type, size_bytes = EXCLUDED.size_bytes,
        sha256 = EXCLUDED.sha256, width = EXCLUDED.width, height = EXCLUDED.height,
        duration_s = EXCLUDED.duration_s
),
deliveries AS (
    INSERT INTO webhook_deliveries (id, workflow_id, user_id, url, scope, event, payload, status,
                                    attempts, next_attempt_at, created_at)
    SELECT d.id, d.workflow_id, d.user_id, d.url, d.scope, d.event, d.payload, d.status,
           d.attempts, d.next_attempt_at, d.created_at
    FROM run, json_populate_recordset(NULL::webhook_deliveries, CAST(%(deliveries)s AS json)) AS d
),
notices AS (
    INSERT INTO notifications (user_id, kind, title, body, link, idempotency_key, created_at)
    SELECT n.user_id, n.kind, n.title, n.body, n.link, n.idempotency_key, n.created_at
    FROM run, json_populate_recordset(NULL::notifications, CAST(%(notices)s AS json)) AS n
    ON CONFLICT (idempotency_key) DO NOTHING
)
SELECT (SELECT ok FROM fenced) AS written, (SELECT cancel_requested FROM held) AS cancel_requested
"""


_APPLY = Prepared.of("reelforge_apply", "WITH" + _HELD + _WRITES)
_CLAIM = Prepared.of("reelforge_claim", "WITH" + _CLAIMED + _WRITES)


def apply_on(connection: Connection, change: StateChange) -> Applied:
    """Write `change` on `connection`: alone, as its own transaction, or inside the
    connection's transaction when it has one (then its fence losing undoes only the change)."""
    if connection.dialect.name == "postgresql":
        return _apply_in_one_statement(connection, change)
    return _apply_in_order(connection, change)


def cancel_requested(connection: Connection, workflow_id: str) -> bool:
    return bool(connection.execute(_CANCEL_FLAG, {"workflow_id": workflow_id}).scalar())


def claim_of_new_run(change: StateChange) -> Bound:
    """A claim to send right after the run's start, in its round trip (Postgres): the start's
    own writes already hold the user's row, so the claim's row locks are not needed."""
    assert change.claim_limit is not None
    return Bound(_CLAIM, _parameters(change))


def applied(row: Row[Any]) -> Applied:
    """What the statement's row says of its change."""
    return Applied(written=bool(row.written), cancel_requested=bool(row.cancel_requested))


def _apply_in_one_statement(connection: Connection, change: StateChange) -> Applied:
    values = _parameters(change)
    if change.claim_limit is None:
        return applied(_APPLY.run(connection, values))
    return applied(_CLAIM.run(connection, values, before=_CLAIM_LOCKS))


def _parameters(change: StateChange) -> dict[str, Any]:
    run = change.run
    return {
        "workflow_id": change.workflow_id,
        "runner_id": change.runner_id,
        "user_id": change.user_id,
        "claim_limit": change.claim_limit,
        "now": change.now,
        "steps": json_text([_step_row(step) for step in change.steps]),
        "step_count": len(change.steps),
        "status": run.status.value,
        "run_runner_id": run.runner_id,
        "worker_id": run.worker_id,
        "heartbeat_at": run.heartbeat_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "events": json_text([{"kind": kind.value, "payload": p} for kind, p in change.events]),
        "event_count": len(change.events),
        "calls": json_text([vars(call) for call in change.calls]),
        "assets": json_text(list(change.assets)),
        "deliveries": json_text(list(change.deliveries)),
        "notices": json_text(list(change.notices)),
    }


def _step_row(step: StepView) -> dict[str, Any]:
    row = {column: getattr(step, column) for column in STEP_COLUMNS}
    return {**row, "name": step.name.value, "sources": list(step_sources(step.status))}


# ---------------------------------------------------------------------------------------------
# SQLite: the same writes in order, in one transaction


class _FenceLost(Exception):
    """Rolls the SQLite transaction back when a write finds its fence gone."""


def _apply_in_order(connection: Connection, change: StateChange) -> Applied:
    transaction = connection.begin_nested if connection.in_transaction() else connection.begin
    try:
        with transaction():
            cancel_requested = _take_fence(connection, change)
            for step in change.steps:
                _write_step(connection, change.workflow_id, step)
            _write_run_and_records(connection, change)
    except _FenceLost:
        return Applied(written=False, cancel_requested=False)
    return Applied(written=True, cancel_requested=cancel_requested)


def _take_fence(connection: Connection, change: StateChange) -> bool:
    run = Workflow.__table__.c
    if change.claim_limit is None:
        fence = (run.runner_id == change.runner_id) & (run.status == WorkflowStatus.RUNNING.value)
    else:
        fence = run.status == WorkflowStatus.QUEUED.value
    held = connection.execute(
        select(run.cancel_requested, run.user_id).where(run.id == change.workflow_id, fence)
    ).first()
    if held is None:
        raise _FenceLost()
    if change.claim_limit is not None and _running_runs(connection, held.user_id) >= (
        change.claim_limit
    ):
        raise _FenceLost()
    return bool(held.cancel_requested)


def _running_runs(connection: Connection, user_id: int) -> int:
    run = Workflow.__table__.c
    return connection.execute(
        select(func.count())
        .where(run.user_id == user_id, run.status == WorkflowStatus.RUNNING.value)
        .select_from(Workflow.__table__)
    ).scalar_one()


def _write_step(connection: Connection, workflow_id: str, step: StepView) -> None:
    columns = WorkflowStep.__table__.c
    written = connection.execute(
        update(WorkflowStep.__table__)
        .where(
            columns.workflow_id == workflow_id,
            columns.name == step.name.value,
            columns.status.in_(step_sources(step.status)),
        )
        .values({column: _plain(getattr(step, column)) for column in STEP_COLUMNS})
    ).rowcount
    if written != 1:
        raise _FenceLost()


def _write_run_and_records(connection: Connection, change: StateChange) -> None:
    run = change.run
    columns = Workflow.__table__.c
    seq = connection.execute(
        update(Workflow.__table__)
        .where(columns.id == change.workflow_id)
        .values(
            {
                **{f.name: _plain(getattr(run, f.name)) for f in fields(RunColumns)},
                "last_event_seq": columns.last_event_seq + len(change.events),
            }
        )
        .returning(columns.last_event_seq)
    ).scalar_one()
    first = seq - len(change.events) + 1
    events = [
        {
            "workflow_id": change.workflow_id,
            "seq": first + i,
            "kind": kind.value,
            "payload": payload,
            "created_at": change.now,
        }
        for i, (kind, payload) in enumerate(change.events)
    ]
    _insert(connection, RunEvent, events)
    _insert(connection, ApiCall, [vars(call) for call in change.calls])
    _insert(connection, WebhookDelivery, list(change.deliveries))
    for asset in change.assets:
        connection.execute(
            sqlite.insert(Asset.__table__)
            .values(**asset, created_at=change.now)
            .on_conflict_do_update(index_elements=["workflow_id", "kind"], set_=asset)
        )
    for notice in change.notices:
        connection.execute(
            sqlite.insert(Notification.__table__)
            .values(**notice)
            .on_conflict_do_nothing(index_elements=["idempotency_key"])
        )


def _insert(connection: Connection, model: Any, rows: list[dict[str, Any]]) -> None:
    if rows:
        connection.execute(insert(model.__table__), rows)


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else value


# ---------------------------------------------------------------------------------------------
# A run as its runner holds it


class Writer(Protocol):
    """Where a HeldRun's changes go: a RunWriter, or (tests) a connection already in a
    transaction, through `apply_on`."""

    def apply(self, change: StateChange) -> Applied: ...

    def cancel_requested(self, workflow_id: str) -> bool: ...


def started(
    step: StepView, *, now: datetime, deadline_at: datetime, worker_id: str | None
) -> StepView:
    """`step` as its start leaves it. A resumed step keeps its first start and its first
    deadline, so a crash loop cannot stretch its time budget."""
    return replace(
        step,
        status=StepStatus.PROCESSING,
        attempts=step.attempts + 1,
        started_at=step.started_at or now,
        deadline_at=step.deadline_at or deadline_at,
        message="started",
        worker_id=worker_id,
    )


def completed(step: StepView, output: dict[str, Any], *, now: datetime) -> StepView:
    return replace(
        step,
        status=StepStatus.COMPLETED,
        progress=100,
        output=output,
        message="done",
        finished_at=now,
    )


@dataclass(frozen=True)
class HeldRun:
    """What every change of one run repeats (its ids, its owner, where its webhooks go), and
    the changes a runner makes to it. Each method is one `RunWriter.apply`; it returns the
    run's cancel flag, and raises InvalidTransitionError when the run is no longer held."""

    writer: Writer
    workflow_id: str
    user_id: int
    runner_id: str
    worker_id: str | None
    started_at: datetime | None
    destinations: tuple[webhooks.Destination, ...]
    first_step_started: bool = False  # the claim started the run's first step

    def claim(self, first: StepView, *, limit: int, recoveries: int) -> bool | None:
        """Take the queued run and start its first step: the run's cancel flag, or None when
        the run was not queued any more or its user has `limit` runs running."""
        applied = self.writer.apply(self.claim_change(first, limit=limit, recoveries=recoveries))
        return applied.cancel_requested if applied.written else None

    def claim_change(self, first: StepView, *, limit: int, recoveries: int) -> StateChange:
        """The claim as a change: the run running, its first step started."""
        now = utcnow()
        change = self._change(
            now,
            steps=(first,),
            events=(
                (EventKind.RUN, run_payload(WorkflowStatus.RUNNING, recoveries=recoveries)),
                (EventKind.STEP, step_payload(first)),
            ),
            deliveries=(
                *self._webhook(now, "started", {"status": WorkflowStatus.RUNNING.value}),
                *self._webhook(now, "step", _step_state(first)),
            ),
        )
        return replace(change, claim_limit=limit, user_id=self.user_id)

    def progress(self, step: StepView, calls: Sequence[ApiCallRecord] = ()) -> bool:
        """The step, still processing, as it now stands (progress, message, provider job)."""
        now = utcnow()
        return self._apply(
            self._change(now, (step,), ((EventKind.STEP, step_payload(step)),), calls=calls)
        )

    def advance(
        self,
        steps: Sequence[StepView],
        *,
        calls: Sequence[ApiCallRecord] = (),
        assets: Sequence[dict[str, Any]] = (),
        completed: WorkflowView | None = None,
    ) -> bool:
        """Steps that start or end (a completion and the next step's start go together), with
        the records the ending step buffered; with `completed`, the run completes too."""
        now = utcnow()
        events = [(EventKind.STEP, step_payload(step)) for step in steps]
        deliveries = [d for step in steps for d in self._webhook(now, "step", _step_state(step))]
        notices: list[dict[str, Any]] = []
        status = WorkflowStatus.RUNNING
        if completed is not None:
            status = WorkflowStatus.COMPLETED
            events.append((EventKind.FINAL, final_payload(status)))
            deliveries += self._webhook(now, "completed", {"status": status.value})
            notices.append(
                inbox.run_ended_notice(
                    self.workflow_id,
                    user_id=self.user_id,
                    status=status,
                    image_prompt=completed.request.image_prompt,
                    cost_credits=completed.cost_credits,
                )
            )
        change = self._change(
            now,
            tuple(steps),
            tuple(events),
            calls=calls,
            assets=assets,
            deliveries=deliveries,
            notices=notices,
            status=status,
        )
        return self._apply(change)

    def cancel_requested(self) -> bool:
        """The run's cancel flag as it stands now (one read)."""
        return self.writer.cancel_requested(self.workflow_id)

    def _apply(self, change: StateChange) -> bool:
        applied = self.writer.apply(change)
        if not applied.written:
            names = ", ".join(f"{s.name} -> {s.status}" for s in change.steps)
            raise InvalidTransitionError(
                f"workflow {self.workflow_id} ({names}): not held by {self.runner_id}, or a "
                "step is not in a state its transition allows"
            )
        return applied.cancel_requested

    def _change(
        self,
        now: datetime,
        steps: tuple[StepView, ...],
        events: tuple[tuple[EventKind, dict[str, Any]], ...],
        *,
        status: WorkflowStatus = WorkflowStatus.RUNNING,
        **records: Any,
    ) -> StateChange:
        running = status is WorkflowStatus.RUNNING
        run = RunColumns(
            status=status,
            runner_id=self.runner_id if running else None,
            worker_id=self.worker_id,
            heartbeat_at=now if running else None,
            started_at=self.started_at,
            finished_at=None if running else now,
        )
        return StateChange(self.workflow_id, self.runner_id, run, steps, events, now=now, **records)

    def _webhook(self, now: datetime, event: str, data: dict[str, Any]) -> list[dict[str, Any]]:
        return webhooks.deliveries(
            self.destinations,
            workflow_id=self.workflow_id,
            user_id=self.user_id,
            event=event,
            data=data,
            now=now,
        )


_CANCEL_FLAG = select(Workflow.__table__.c.cancel_requested).where(
    Workflow.__table__.c.id == bindparam("workflow_id")
)


def _step_state(step: StepView) -> dict[str, Any]:
    return {"step": step.name.value, "state": step.status.value}
