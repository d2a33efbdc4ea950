"""A run's start in one statement (Postgres, core.run_start) writes what the full start writes,
and every fence it carries sends the start to the full one, which decides and words the
refusal."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import event, select, update

from core import budgets, credits, workflows
from core.auth import UserView, create_user
from core.db import Database
from core.errors import BudgetExceededError, InsufficientCreditsError, PermissionDeniedError
from core.models import CreditTransaction, RunEvent, User, Workflow, WorkflowStep
from core.schemas import parse_request

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
