"""Monthly credit budgets: per user, per project, and optionally one for the whole team.

A budget row holds only its limit. What a scope spent in a month is read from the ledger: the
reservations minus the refunds of the runs created in that month (a calendar month in UTC). So
a refund gives budget back, to the month its run was charged in, with no second counter to keep
in step; and "spent" is right for a budget set in the middle of a month.

`charge` runs in the start's transaction, before the reservation: it locks the budget rows that
apply (FOR UPDATE on Postgres; SQLite's write transactions are serial already), reads their
spend and refuses with BudgetExceededError, which rolls the whole start back. Two starts
against one budget queue on its row, and the second reads the first's committed reservation
(READ COMMITTED takes a fresh snapshot per statement). In the same transaction every threshold
the start crosses (80%, 100%) is recorded once, under a unique key, and reaches the inbox.

Invariant: no start takes a budget's spend in a month past its limit (only lowering a limit
can leave a month above it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core import clock, credits, inbox, webhooks
from core.db import insert_once
from core.errors import BudgetExceededError, NotFoundError, RequestValidationError
from core.models import AuditEvent, Budget, BudgetAlert, CreditTransaction, Project, User, Workflow

THRESHOLDS = (80, 100)  # percent of the limit; each alerts once per budget and month


class ScopeKind(StrEnum):
    USER = "user"
    PROJECT = "project"
    TEAM = "team"


@dataclass(frozen=True)
class Scope:
    kind: ScopeKind
    id: int | None = None  # the user's or the project's; None for the team

    @property
    def key(self) -> str:
        return self.kind.value if self.kind is ScopeKind.TEAM else f"{self.kind.value}:{self.id}"

    @classmethod
    def from_key(cls, key: str) -> Scope:
        kind, _, ident = key.partition(":")
        return cls(ScopeKind(kind), int(ident) if ident else None)


TEAM = Scope(ScopeKind.TEAM)


@dataclass(frozen=True)
class Period:
    """A calendar month in UTC: [start, end)."""

    start: datetime
    end: datetime

    @property
    def label(self) -> str:
        return f"{self.start:%Y-%m}"


def period_of(moment: datetime) -> Period:
    start = moment.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return Period(start, (start + timedelta(days=32)).replace(day=1))


def month_start(label: str) -> datetime:
    """The first instant (UTC) of the month a period label ("2026-11") names."""
    return datetime.strptime(label, "%Y-%m").replace(tzinfo=UTC)


@dataclass(frozen=True)
class BudgetStatus:
    scope: Scope
    name: str  # for people: "alice@example.com", "project 'Winter' of bob@...", "the team"
    limit: int
    spent: int
    period: Period

    @property
    def left(self) -> int:
        return max(0, self.limit - self.spent)

    @property
    def resets_at(self) -> datetime:
        return self.period.end

    def refusal(self, needed: int) -> BudgetExceededError:
        return BudgetExceededError(
            budget=f"the monthly budget of {self.name}",
            scope=self.scope.key,
            limit=self.limit,
            left=self.left,
            needed=needed,
            resets_at=self.resets_at,
        )


def scopes_of(user_id: int, project_id: int | None) -> list[Scope]:
    """The budgets a run of this user (in this project) counts against."""
    scopes = [Scope(ScopeKind.USER, user_id), TEAM]
    if project_id is not None:
        scopes.insert(1, Scope(ScopeKind.PROJECT, project_id))
    return scopes


# ---------------------------------------------------------------------------------------------
# Spend and the check at start


def spent(session: Session, scope: Scope, period: Period) -> int:
    """Credits the scope's runs created in `period` reserved, minus what came back to them."""
    query = (
        select(func.coalesce(func.sum(CreditTransaction.amount), 0))
        .join(Workflow, Workflow.id == CreditTransaction.workflow_id)
        .where(
            # A reused still's release gives its credits back to the budget, as a refund does.
            CreditTransaction.kind.in_(
                (
                    credits.TransactionKind.RESERVE.value,
                    credits.TransactionKind.REFUND.value,
                    credits.TransactionKind.RELEASE.value,
                )
            ),
            Workflow.created_at >= period.start,
            Workflow.created_at < period.end,
        )
    )
    if scope.kind is ScopeKind.USER:
        query = query.where(Workflow.user_id == scope.id)
    elif scope.kind is ScopeKind.PROJECT:
        query = query.where(Workflow.project_id == scope.id)
    return -int(session.execute(query).scalar_one())


def charge(
    session: Session,
    *,
    workflow_id: str,
    user_id: int,
    project_id: int | None,
    cost: int,
    at: datetime,
) -> None:
    """Count a starting run against every budget that applies, or refuse it (naming the budget
    with the least left) when one would go past its limit. Call before the run's reservation,
    in the same transaction."""
    keys = [scope.key for scope in scopes_of(user_id, project_id)]
    rows = session.execute(
        select(Budget.scope_key, Budget.monthly_limit)
        .where(Budget.scope_key.in_(keys))
        .order_by(Budget.id)  # one lock order for every start: no deadlock between two
        .with_for_update()
    ).all()
    period = period_of(at)
    scopes = [(Scope.from_key(key), limit) for key, limit in rows]
    before = [(scope, limit, spent(session, scope, period)) for scope, limit in scopes]
    over = [(scope, limit, used) for scope, limit, used in before if used + cost > limit]
    if over:
        scope, limit, used = min(over, key=lambda item: item[1] - item[2])
        raise BudgetStatus(scope, scope_name(session, scope), limit, used, period).refusal(cost)
    for scope, limit, used in before:
        for threshold in THRESHOLDS:
            if used * 100 < threshold * limit <= (used + cost) * 100:
                _alert(session, scope, period, threshold, limit, used + cost, workflow_id, user_id)


def _alert(
    session: Session,
    scope: Scope,
    period: Period,
    threshold: int,
    limit: int,
    now_spent: int,
    workflow_id: str,
    user_id: int,
) -> None:
    """Record one crossing, once: a retried or concurrent start finds the key taken. The key
    holds the limit, so a raised limit alerts again when its own thresholds are crossed."""
    alert_id = insert_once(
        session,
        BudgetAlert,
        {
            "idempotency_key": f"{scope.key}:{period.label}:{threshold}%:{limit}",
            "scope_key": scope.key,
            "period": period.label,
            "threshold": threshold,
            "monthly_limit": limit,
            "spent": now_spent,
            "workflow_id": workflow_id,
            "created_at": clock.utcnow(),
        },
    )
    if alert_id is None:
        return
    name = scope_name(session, scope)
    webhooks.enqueue(
        session,
        workflow_id,
        "budget",
        {
            "budget": {"scope": scope.kind.value, "name": name},
            "period": period.label,
            "threshold": threshold,
            "limit": limit,
            "spent": now_spent,
        },
    )
    inbox.notify(
        session,
        alert_recipients(session, scope, user_id),
        kind=inbox.NoticeKind.BUDGET_ALERT,
        title=alert_title(threshold, name),
        body=alert_body(limit, now_spent, period),
        link=inbox.run_link(workflow_id),
        key=f"alert:{alert_id}",
    )


def alert_title(threshold: int, name: str) -> str:
    return f"Budget alert: {threshold}% of the monthly budget of {name} is spent"


def alert_body(limit: int, now_spent: int, period: Period) -> str:
    return (
        f"{now_spent:,} of {limit:,} credits spent in {period.start:%B %Y}; "
        f"{max(0, limit - now_spent):,} left until {period.end:%d %B %Y} 00:00 UTC "
        "(budgets follow calendar months in UTC)."
    )


def alert_recipients(session: Session, scope: Scope, run_user_id: int) -> list[int]:
    """Who hears of a crossing: the budget's user (a project's owner and the run's user; for
    the team budget, the run's user) and every active admin."""
    owners = [run_user_id]
    if scope.kind is ScopeKind.USER:
        owners = [scope.id]  # type: ignore[list-item]
    elif scope.kind is ScopeKind.PROJECT:
        owner = session.execute(select(Project.user_id).where(Project.id == scope.id)).scalar()
        owners = [owner, run_user_id] if owner is not None else owners
    return list(dict.fromkeys([*owners, *inbox.admin_ids(session)]))


# ---------------------------------------------------------------------------------------------
# Reading


def scope_name(session: Session, scope: Scope) -> str:
    if scope.kind is ScopeKind.TEAM:
        return "the team"
    if scope.kind is ScopeKind.USER:
        email = session.execute(select(User.email).where(User.id == scope.id)).scalar()
        return email or f"user {scope.id}"
    row = session.execute(
        select(Project.name, User.email)
        .join(User, User.id == Project.user_id)
        .where(Project.id == scope.id)
    ).first()
    return f"project {row.name!r} of {row.email}" if row else f"project {scope.id}"


def statuses(session: Session, *, now: datetime | None = None) -> list[BudgetStatus]:
    """Every budget with what it spent this month: the team's first, then by name."""
    rows = session.execute(select(Budget.scope_key, Budget.monthly_limit)).all()
    found = _with_spend(session, rows, period_of(now or clock.utcnow()))
    return sorted(found, key=lambda s: (s.scope.kind is not ScopeKind.TEAM, s.name.lower()))


def tightest(
    session: Session, user_id: int, project_id: int | None, *, now: datetime | None = None
) -> BudgetStatus | None:
    """Of the budgets a run would count against, the one with the least left (None: none)."""
    keys = [scope.key for scope in scopes_of(user_id, project_id)]
    rows = session.execute(
        select(Budget.scope_key, Budget.monthly_limit).where(Budget.scope_key.in_(keys))
    ).all()
    found = _with_spend(session, rows, period_of(now or clock.utcnow()))
    return min(found, key=lambda s: s.left, default=None)


def _with_spend(session: Session, rows: Sequence[Any], period: Period) -> list[BudgetStatus]:
    """(scope_key, limit) rows as statuses, named, with their spend in `period`."""
    scopes = [(Scope.from_key(key), limit) for key, limit in rows]
    return [
        BudgetStatus(s, scope_name(session, s), limit, spent(session, s, period), period)
        for s, limit in scopes
    ]


def project_choices(session: Session) -> dict[int, str]:
    """Every project, {id: "Name · owner@email"}, for choosing one to cap."""
    rows = session.execute(
        select(Project.id, Project.name, User.email)
        .join(User, User.id == Project.user_id)
        .order_by(func.lower(Project.name), User.email)
    )
    return {r.id: f"{r.name} · {r.email}" for r in rows}


def find_scope(
    session: Session,
    *,
    user: str | None = None,
    project: str | None = None,
    owner: str | None = None,
    team: bool = False,
) -> Scope:
    """The scope named by an email, a project name (with its owner's email when several
    users have a project of that name), or the team: as the CLI takes them."""
    if team:
        return TEAM
    if user is not None:
        found = session.execute(select(User.id).where(User.email == user.strip().lower())).scalar()
        if found is None:
            raise RequestValidationError({"--user": f"no account for {user}"})
        return Scope(ScopeKind.USER, found)
    query = select(Project.id).where(func.lower(Project.name) == (project or "").strip().lower())
    if owner is not None:
        query = query.join(User, User.id == Project.user_id).where(
            User.email == owner.strip().lower()
        )
    ids = list(session.execute(query).scalars())
    if not ids:
        raise RequestValidationError({"--project": f"no project called {project!r}"})
    if len(ids) > 1:
        raise RequestValidationError(
            {"--project": f"{len(ids)} users have a project called {project!r}; add --owner EMAIL"}
        )
    return Scope(ScopeKind.PROJECT, ids[0])


# ---------------------------------------------------------------------------------------------
# Setting and clearing (admins; the caller checks the role)


def set_budget(session: Session, scope: Scope, monthly_limit: int, *, actor: str) -> BudgetStatus:
    """Create or change the scope's monthly budget; an audit event records old and new."""
    monthly_limit = credits.checked_amount(monthly_limit, "monthly")
    _check_exists(session, scope)
    row = session.execute(
        select(Budget).where(Budget.scope_key == scope.key).with_for_update()
    ).scalar_one_or_none()
    old = None if row is None else row.monthly_limit
    if row is None:
        row = Budget(
            scope_key=scope.key,
            user_id=scope.id if scope.kind is ScopeKind.USER else None,
            project_id=scope.id if scope.kind is ScopeKind.PROJECT else None,
            monthly_limit=monthly_limit,
            updated_by=actor,
        )
        session.add(row)
    row.monthly_limit, row.updated_at, row.updated_by = monthly_limit, clock.utcnow(), actor
    _audit(session, actor, "budget.set", scope, {"old": old, "new": monthly_limit})
    session.flush()
    return _with_spend(session, [(scope.key, monthly_limit)], period_of(clock.utcnow()))[0]


def clear_budget(session: Session, scope: Scope, *, actor: str) -> bool:
    """Remove the scope's budget; False when it had none."""
    row = session.execute(
        select(Budget).where(Budget.scope_key == scope.key).with_for_update()
    ).scalar_one_or_none()
    if row is None:
        return False
    _audit(session, actor, "budget.clear", scope, {"old": row.monthly_limit})
    session.delete(row)
    return True


def _check_exists(session: Session, scope: Scope) -> None:
    model = {ScopeKind.USER: User, ScopeKind.PROJECT: Project}.get(scope.kind)
    if model is not None and session.get(model, scope.id) is None:
        raise NotFoundError(f"{scope.kind.value} {scope.id} does not exist")


def _audit(session: Session, actor: str, action: str, scope: Scope, details: dict) -> None:
    session.add(
        AuditEvent(actor=actor, action=action, target=f"budget:{scope.key}", details=details)
    )
