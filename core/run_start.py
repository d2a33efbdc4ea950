"""A run's start as one statement on Postgres: the common case of core.workflows.start_workflow.

The full start (an ORM transaction of about ten statements) checks the user, their project,
the budgets that apply, prices the run, reserves its credits and writes the run, its steps, its
ledger row and its first event. Most starts meet no budget, reuse no still and carry no
idempotency key; for them this statement does the same writes, each fenced on what the full
start would have checked:
- the user is active and their balance covers the cost (the conditional UPDATE that also
  reserves, as core.credits does);
- no budget row exists for the run's scopes (a budget needs the full start's check);
- the project, if any, is the user's;
- the credit costs stored are still those the run was priced with (this process's last read);
- no run has the start's client key yet (a double click): then that run is returned, nothing
  written. Two identical starts racing both pass that read; the second's insert then breaks
  the unique key and the whole statement rolls back, as the full start's would.
When any fence fails nothing is written and the caller runs the full start, which decides
again and words the refusal (InsufficientCreditsError, BudgetExceededError, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Row

from core.db import Bound, Prepared, json_text

START = Prepared.of(
    "reelforge_start",
    """
WITH existing AS (
    SELECT id FROM workflows WHERE user_id = %(user_id)s AND client_key = %(client_key)s
),
payer AS (
    UPDATE users SET balance = balance - %(cost)s
    WHERE id = %(user_id)s AND is_active AND balance >= %(cost)s
      AND NOT EXISTS (SELECT 1 FROM existing)
      AND NOT EXISTS (SELECT 1 FROM budgets WHERE scope_key = ANY (CAST(%(scopes)s AS text[])))
      AND (CAST(%(project_id)s AS integer) IS NULL
           OR EXISTS (SELECT 1 FROM projects
                      WHERE id = CAST(%(project_id)s AS integer) AND user_id = %(user_id)s))
      AND (SELECT CAST(value AS jsonb) FROM settings WHERE key = %(costs_key)s)
          IS NOT DISTINCT FROM CAST(%(stored_costs)s AS jsonb)
    RETURNING balance
),
run AS (
    INSERT INTO workflows (id, user_id, project_id, client_key, status, image_prompt,
                           video_prompt, request, cost_credits, image_credits, video_model,
                           image_fingerprint, global_webhook_url, trace_id, traceparent,
                           created_at, cancel_requested, recoveries, last_event_seq)
    SELECT r.id, r.user_id, r.project_id, r.client_key, r.status, r.image_prompt,
           r.video_prompt, r.request, r.cost_credits, r.image_credits, r.video_model,
           r.image_fingerprint, r.global_webhook_url, r.trace_id, r.traceparent,
           r.created_at, false, 0, 1
    FROM payer, json_populate_record(NULL::workflows, CAST(%(run)s AS json)) AS r
    RETURNING *
),
steps AS (
    INSERT INTO workflow_steps (workflow_id, name, position, status, progress, message,
                                attempts, output)
    SELECT s.workflow_id, s.name, s.position, s.status, s.progress, s.message, s.attempts,
           s.output
    FROM run, json_populate_recordset(NULL::workflow_steps, CAST(%(steps)s AS json)) AS s
),
ledger AS (
    INSERT INTO credit_transactions (user_id, kind, amount, balance_after, workflow_id, actor,
                                     reason, idempotency_key, created_at)
    SELECT run.user_id, 'reserve', -run.cost_credits, payer.balance, run.id, %(actor)s,
           %(reason)s, 'reserve:' || run.id, run.created_at
    FROM run, payer
),
event AS (
    INSERT INTO run_events (workflow_id, seq, kind, payload, created_at)
    SELECT run.id, 1, %(event_kind)s, CAST(%(event)s AS json), run.created_at FROM run
)
SELECT (SELECT id FROM run) AS created_id, (SELECT id FROM existing) AS existing_id
""",
)


@dataclass(frozen=True)
class StartRequest:
    """What the statement writes: the run's row and its steps' as the full start would make
    them, the budget scopes that must have no budget, the stored costs it was priced with, and
    the run's first event."""

    run: dict[str, Any]
    steps: list[dict[str, Any]]
    scopes: list[str]
    costs_key: str
    stored_costs: dict[str, Any] | None
    actor: str
    reason: str
    event_kind: str
    event: dict[str, Any]


@dataclass(frozen=True)
class StartOutcome:
    created: bool  # the statement wrote the run
    existing_id: str | None  # the run an earlier start with the same client key made


def start(connection: Connection, request: StartRequest) -> StartOutcome:
    """Send the statement on an autocommit `connection` (its own transaction)."""
    row = START.run(connection, _values(request))
    return StartOutcome(created=row.created_id is not None, existing_id=row.existing_id)


def start_then(connection: Connection, request: StartRequest, then: Bound) -> Row[Any]:
    """Send the statement, then `then` in the same round trip and the same transaction (a
    runner's claim of the new run, core.orchestrator); `then`'s row. `then` sees the run the
    start wrote, and runs after the start's row locks are taken."""
    return then.statement.run(connection, then.values, first=[Bound(START, _values(request))])


def written(connection: Connection, workflow_id: str) -> bool:
    """Whether the run exists: after start_then, whether its start wrote it."""
    return connection.exec_driver_sql(_EXISTS, {"id": workflow_id}).scalar() is not None


_EXISTS = "SELECT 1 FROM workflows WHERE id = %(id)s"


def _values(request: StartRequest) -> dict[str, Any]:
    run, stored_costs = request.run, request.stored_costs
    return {
        "user_id": run["user_id"],
        "client_key": run["client_key"],
        "cost": run["cost_credits"],
        "scopes": request.scopes,
        "project_id": run["project_id"],
        "costs_key": request.costs_key,
        "stored_costs": None if stored_costs is None else json_text(stored_costs),
        "run": json_text(run),
        "steps": json_text(request.steps),
        "actor": request.actor,
        "reason": request.reason,
        "event_kind": request.event_kind,
        "event": json_text(request.event),
    }
