"""A run's start in one statement (Postgres, core.run_start) writes what the full start writes,
and every fence it carries sends the start to the full one, which decides and words the
refusal."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event, select, update

from core import budgets, credits, liveness, workflows
from core.auth import UserView, create_user
from core.config import Settings
from core.db import Database
from core.errors import BudgetExceededError, InsufficientCreditsError, PermissionDeniedError
from core.executor import ThreadExecutor
from core.models import CreditTransaction, RunEvent, User, Workflow, WorkflowStep
from core.providers import build_providers
from core.runtime import Runtime
from core.schemas import parse_request
from core.states import StepName, StepStatus, WorkflowStatus
from tests.helpers import balance, load, wait_for

REQUEST = parse_request({"imagePrompt": "a fox", "videoPrompt": "dolly in"})
COST = credits.cost_of(REQUEST, credits.DEFAULT_CREDIT_COSTS)


@pytest.fixture
def database_url(postgres_only_url: str) -> str:
    """Postgres only: SQLite starts a run with the full start alone."""
    return postgres_only_url


@pytest.fixture
def one_statement_starts(db: Database) -> list[str]:
    """The one-statement starts sent from here on (its EXECUTEs on the statements pool)."""
    sent: list[str] = []

    @event.listens_for(db.statements.engine, "before_cursor_execute")
    def seen(conn, cursor, statement: str, *args: Any) -> None:
        if statement.startswith("EXECUTE reelforge_start"):
            sent.append(statement)

    return sent


@pytest.fixture
def costs_read(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """This process has read the costs (as its first full start does)."""
    monkeypatch.setattr(credits, "_last_read", None)
    with db.read() as session:
        credits.load_costs(session)


def make_user(db: Database, credits_: int = 100) -> UserView:
    with db.begin() as session:
        return create_user(session, "someone@example.com", starting_credits=credits_)


def start(db: Database, user: UserView, key: str) -> workflows.Started:
    return workflows.start_workflow(db, user_id=user.id, request=REQUEST, client_key=key, actor="t")


def rows_of(db: Database, workflow_id: str) -> dict[str, Any]:
    """Everything a start wrote for the run, without what differs between any two runs."""
    with db.read() as session:
        run = session.execute(select(Workflow).where(Workflow.id == workflow_id)).scalar_one()
        steps = session.scalars(
            select(WorkflowStep).where(WorkflowStep.workflow_id == workflow_id)
        ).all()
        ledger = session.scalars(
            select(CreditTransaction).where(CreditTransaction.workflow_id == workflow_id)
        ).all()
        events = session.scalars(select(RunEvent).where(RunEvent.workflow_id == workflow_id)).all()
        varying = {
            "id",
            "client_key",
            "created_at",
            "workflow_id",
            "idempotency_key",
            "balance_after",
        }

        def plain(row: Any) -> dict[str, Any]:
            columns = row.__table__.columns.keys()
            return {c: getattr(row, c) for c in columns if c not in varying | {"id"}}

        return {
            "run": plain(run),
            "steps": sorted((plain(s) for s in steps), key=lambda s: s["position"]),
            "ledger": [plain(entry) for entry in ledger],
            "events": [plain(e) | {"created_at": None} for e in events],
        }


def test_a_start_in_one_statement_writes_what_the_full_start_writes(
    db, monkeypatch, one_statement_starts
):
    user = make_user(db, credits_=1000)
    monkeypatch.setattr(credits, "_last_read", None)  # a new process: costs not read yet
    full = start(db, user, "first")
    assert one_statement_starts == []  # the full start, which reads the costs
    quick = start(db, user, "second")
    assert len(one_statement_starts) == 1
    assert full.created and quick.created
    assert rows_of(db, quick.workflow_id) == rows_of(db, full.workflow_id)
    with db.read() as session:
        assert credits.balance_mismatches(session) == []
        assert workflows.load_workflow(session, quick.workflow_id) == quick.view
    assert quick.view is not None


def test_the_same_client_key_again_returns_the_run_and_charges_nothing(
    db, costs_read, one_statement_starts
):
    user = make_user(db)
    first, again = start(db, user, "click"), start(db, user, "click")
    assert (again.workflow_id, again.created) == (first.workflow_id, False)
    assert len(one_statement_starts) == 2
    with db.read() as session:
        assert credits.history(session, user.id, limit=1)[0].balance_after == 100 - COST


def test_costs_changed_since_this_process_read_them_price_the_run_anew(db, costs_read):
    user = make_user(db)
    raw = credits.DEFAULT_CREDIT_COSTS.model_dump()
    for quality in raw["image"].values():
        quality["square"] += 7
        quality["wide"] += 7
    with db.begin() as session:  # as an admin's page in another process would
        credits.save_costs(session, raw, actor="admin@example.com")
    started = start(db, user, "k")
    with db.read() as session:
        run = session.get(Workflow, started.workflow_id)
        assert run is not None and run.cost_credits == COST + 7


@pytest.mark.parametrize("refusal", ["balance", "inactive", "budget"])
def test_a_start_its_fences_refuse_is_refused_by_the_full_start_with_nothing_written(
    db, costs_read, one_statement_starts, refusal
):
    user = make_user(db, credits_=COST - 1 if refusal == "balance" else 100)
    with db.begin() as session:
        if refusal == "inactive":
            session.execute(update(User).where(User.id == user.id).values(is_active=False))
        if refusal == "budget":
            budgets.set_budget(
                session, budgets.Scope(budgets.ScopeKind.USER, user.id), COST - 1, actor="a"
            )
    expected = {
        "balance": InsufficientCreditsError,
        "inactive": PermissionDeniedError,
        "budget": BudgetExceededError,
    }[refusal]
    with pytest.raises(expected):
        start(db, user, "k")
    assert len(one_statement_starts) == 1  # tried, fenced out, then the full start refused
    with db.read() as session:
        assert session.scalars(select(Workflow.id).where(Workflow.user_id == user.id)).all() == []


# -- a runner of this process claims the run in its start's round trip ------------------------


class GatedModerator:
    """The offline moderator, holding each run in its first step until the gate opens."""

    def __init__(self, inner: Any) -> None:
        self._inner, self.name = inner, inner.name
        self.gate, self.entered = threading.Event(), threading.Semaphore(0)

    def moderate(self, texts: list[str]) -> Any:
        self.entered.release()
        assert self.gate.wait(timeout=30)
        return self._inner.moderate(texts)


@pytest.fixture
def limit() -> int:
    """A user's runs running at once (a test parametrizes it to change it)."""
    return 2


@pytest.fixture
def gated(settings: Settings, costs_read, limit: int) -> Iterator[tuple[Runtime, GatedModerator]]:
    """A runtime with two run threads whose runs wait in their first step for the gate."""
    providers = build_providers(settings)
    moderator = GatedModerator(providers.moderator)
    runtime = Runtime(
        settings.model_copy(update={"max_active_runs_per_user": limit}),
        upgrade=False,
        executor=ThreadExecutor(2),
        providers=dataclasses.replace(providers, moderator=moderator),
    )
    yield runtime, moderator
    moderator.gate.set()
    runtime.shutdown()


def claims_sent_with_starts(runtime: Runtime) -> list[str]:
    sent: list[str] = []

    @event.listens_for(runtime.db.statements.engine, "before_cursor_execute")
    def seen(conn, cursor, statement: str, *args: Any) -> None:
        if statement.startswith("EXECUTE reelforge_start") and "reelforge_claim" in statement:
            sent.append(statement)

    return sent


def test_a_free_runner_claims_the_run_in_its_starts_round_trip(gated, make_user):
    runtime, moderator = gated
    claims = claims_sent_with_starts(runtime)
    workflow_id, created = runtime.start_workflow(make_user(), REQUEST)

    # Running as the start returns, its lock held: no moment queued, none with a free lock.
    run = load(runtime, workflow_id)
    assert created and len(claims) == 1
    assert (run.status, run.runner_id) == (WorkflowStatus.RUNNING, runtime.orchestrator.runner_id)
    assert run.step(StepName.VALIDATE).status is StepStatus.PROCESSING
    assert liveness.unheld(runtime.db, [workflow_id]) == []
    moderator.gate.set()
    wait_for(lambda: load(runtime, workflow_id).status is WorkflowStatus.COMPLETED)


def test_a_run_that_must_wait_for_a_thread_starts_queued(gated, make_user):
    runtime, moderator = gated
    user = make_user(credits=1000)
    busy = [runtime.start_workflow(user, REQUEST)[0] for _ in range(2)]
    for _ in busy:
        assert moderator.entered.acquire(timeout=30)  # both threads taken
    claims = claims_sent_with_starts(runtime)

    waiting, _ = runtime.start_workflow(user, REQUEST)
    assert claims == [] and load(runtime, waiting).status is WorkflowStatus.QUEUED
    moderator.gate.set()
    for workflow_id in [*busy, waiting]:
        wait_for(lambda w=workflow_id: load(runtime, w).status is WorkflowStatus.COMPLETED)


@pytest.mark.parametrize("limit", [1])
def test_a_claim_its_users_limit_refuses_leaves_the_run_queued_and_its_lock_free(gated, make_user):
    runtime, moderator = gated
    user = make_user(credits=1000)
    first, _ = runtime.start_workflow(user, REQUEST)
    claims = claims_sent_with_starts(runtime)

    second, created = runtime.start_workflow(user, REQUEST)  # a thread is free, the user is not
    assert created and len(claims) == 1
    assert load(runtime, second).status is WorkflowStatus.QUEUED
    # Its lock given back (a thread here may take it a moment, and be refused the same way).
    wait_for(lambda: liveness.unheld(runtime.db, [second]) == [second], timeout_s=10)
    moderator.gate.set()
    for workflow_id in (first, second):  # the second goes once the first frees its slot
        wait_for(lambda w=workflow_id: load(runtime, w).status is WorkflowStatus.COMPLETED)
    assert balance(runtime, user) == 1000 - 2 * COST
