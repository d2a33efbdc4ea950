"""The credit-admin page's engine: users and balances, grants and deductions, ledger history,
refunds, the credit costs (with the editor's field-by-field form of them, and what each edit
changed) and user management.

Every function takes the acting user and refuses anyone who is not an active admin *now*: the
check reads the actor's row in the same transaction, so a role revoked a minute ago is not
trusted from a stale session view. Credit moves go through core.credits (a ledger row whose
actor is the admin's email); everything else an admin changes leaves an audit event.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core import auth, budgets, credits, sessions
from core.auth import Role, UserView
from core.budgets import BudgetStatus, Scope
from core.credits import CreditCosts, LedgerEntry, TransactionKind
from core.errors import (
    InsufficientCreditsError,
    NotFoundError,
    PermissionDeniedError,
    RequestValidationError,
)
from core.models import AuditEvent, CreditTransaction, Setting, User, Workflow, view_of
from core.schemas import DISPLAY_NAME_MAX_CHARS, WorkflowRequest, clean_name
from core.states import WorkflowStatus

REASON_MAX_CHARS = 500
MAX_CREDITS_PER_MOVE = 1_000_000
LEDGER_PAGE_SIZE = 50


@dataclass(frozen=True)
class UserRow:
    id: int
    email: str
    display_name: str
    role: Role
    is_active: bool
    balance: int
    created_at: datetime
    low_balance: bool  # balance below the threshold list_users was given


@dataclass(frozen=True)
class LedgerPage:
    entries: list[LedgerEntry]  # newest first
    total: int
    page: int  # 1-based
    page_size: int

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.page_size))


@dataclass(frozen=True)
class RefundRow:
    id: int
    created_at: datetime
    user_id: int
    email: str
    workflow_id: str | None
    amount: int
    reason: str
    actor: str  # "system" for automatic refunds, else the admin who gave it
    workflow_status: str | None
    error_category: str | None


@dataclass(frozen=True)
class CostsView:
    costs: CreditCosts
    updated_at: datetime | None  # None: the built-in defaults, never edited
    updated_by: str | None


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    action: str
    target: str
    details: dict[str, Any]


@dataclass(frozen=True)
class CreatedUser:
    user: UserView
    generated_password: str | None  # set when none was given; show it once


# ---------------------------------------------------------------------------------------------
# The gate


def require_admin(session: Session, actor: UserView) -> None:
    """Raise PermissionDeniedError unless `actor` is, in the database right now, an active
    admin."""
    row = session.execute(select(User.role, User.is_active).where(User.id == actor.id)).first()
    if row is None or not row.is_active or row.role != Role.ADMIN.value:
        raise PermissionDeniedError("only an active admin may do this")


# ---------------------------------------------------------------------------------------------
# Users and balances


def low_balance_threshold(session: Session) -> int:
    """The default low-balance line: what one run with the default options costs now."""
    default = WorkflowRequest.model_validate({"imagePrompt": "x", "videoPrompt": "x"})
    return credits.cost_of(default, credits.load_costs(session))


def list_users(
    session: Session, actor: UserView, *, low_balance_below: int | None = None
) -> list[UserRow]:
    """Every account, by email, flagged when its balance is below `low_balance_below`
    (default: low_balance_threshold, the price of one default run)."""
    require_admin(session, actor)
    threshold = low_balance_threshold(session) if low_balance_below is None else low_balance_below
    rows = session.execute(select(User).order_by(User.email)).scalars()
    return [
        UserRow(
            id=u.id,
            email=u.email,
            display_name=auth.display_name_of(u),
            role=Role(u.role),
            is_active=u.is_active,
            balance=u.balance,
            created_at=u.created_at,
            low_balance=u.balance < threshold,
        )
        for u in rows
    ]


def grant_credits(
    session: Session, actor: UserView, user_id: int, amount: int, *, reason: str
) -> int:
    """Add credits; returns the new balance. The ledger row names the admin and the reason."""
    require_admin(session, actor)
    amount, reason = _credits(amount), _reason(reason)
    _user(session, user_id)
    return credits.grant(session, user_id, amount, actor=actor.email, reason=reason)


def deduct_credits(
    session: Session, actor: UserView, user_id: int, amount: int, *, reason: str
) -> int:
    """Take credits away (an `adjust` ledger row); never below zero. Returns the new balance."""
    require_admin(session, actor)
    amount, reason = _credits(amount), _reason(reason)
    _user(session, user_id)
    try:
        return credits.adjust(session, user_id, -amount, actor=actor.email, reason=reason)
    except InsufficientCreditsError as exc:
        raise RequestValidationError(
            {"amount": f"cannot deduct {amount}: the balance is {exc.balance}"}
        ) from None


def ledger_history(
    session: Session,
    actor: UserView,
    user_id: int,
    *,
    page: int = 1,
    page_size: int = LEDGER_PAGE_SIZE,
) -> LedgerPage:
    """One page of a user's ledger, newest first."""
    require_admin(session, actor)
    if page < 1 or not 1 <= page_size <= 500:
        raise RequestValidationError({"page": "page >= 1 and 1 <= page_size <= 500"})
    _user(session, user_id)
    total = session.execute(
        select(func.count()).where(CreditTransaction.user_id == user_id)
    ).scalar_one()
    rows = session.execute(
        select(CreditTransaction)
        .where(CreditTransaction.user_id == user_id)
        .order_by(CreditTransaction.id.desc())
        .offset((page - 1) * page_size)
        .limit(page_size)
    ).scalars()
    return LedgerPage(
        entries=[view_of(LedgerEntry, r) for r in rows],
        total=total,
        page=page,
        page_size=page_size,
    )


def refunds(
    session: Session,
    actor: UserView,
    *,
    user_id: int | None = None,
    since: datetime | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[RefundRow]:
    """Refund ledger rows, newest first, with the run's status and failure category."""
    require_admin(session, actor)
    query = (
        select(
            CreditTransaction.id,
            CreditTransaction.created_at,
            CreditTransaction.user_id,
            User.email,
            CreditTransaction.workflow_id,
            CreditTransaction.amount,
            CreditTransaction.reason,
            CreditTransaction.actor,
            Workflow.status.label("workflow_status"),
            Workflow.error_category,
        )
        .join(User, User.id == CreditTransaction.user_id)
        .outerjoin(Workflow, Workflow.id == CreditTransaction.workflow_id)
        .where(CreditTransaction.kind == TransactionKind.REFUND.value)
        .order_by(CreditTransaction.created_at.desc(), CreditTransaction.id.desc())
        .offset(offset)
        .limit(limit)
    )
    if user_id is not None:
        query = query.where(CreditTransaction.user_id == user_id)
    if since is not None:
        query = query.where(CreditTransaction.created_at >= since)
    return [RefundRow(**r._mapping) for r in session.execute(query)]


def refund_run(session: Session, actor: UserView, workflow_id: str, *, reason: str) -> int:
    """Give a finished run's credits back (e.g. a completed clip that is unusable); failed and
    cancelled runs were refunded automatically, and no run is ever refunded twice. Returns the
    credits refunded."""
    require_admin(session, actor)
    reason = _reason(reason)
    status = session.execute(select(Workflow.status).where(Workflow.id == workflow_id)).scalar()
    if status is None:
        raise NotFoundError(f"workflow {workflow_id} not found")
    if WorkflowStatus(status).is_active:
        raise RequestValidationError(
            {"workflow": "is still running; it is refunded automatically if it fails"}
        )
    previous = credits.refund_entry(session, workflow_id)
    if previous is not None:
        raise RequestValidationError(
            {"workflow": f"was already refunded (ledger entry {previous.id})"}
        )
    refunded = credits.refund(session, workflow_id, reason=reason, actor=actor.email)
    if not refunded:
        raise RequestValidationError({"workflow": "cost nothing, there is nothing to refund"})
    return refunded


# ---------------------------------------------------------------------------------------------
# Monthly budgets


def budget_statuses(session: Session, actor: UserView) -> list[BudgetStatus]:
    require_admin(session, actor)
    return budgets.statuses(session)


def budget_projects(session: Session, actor: UserView) -> dict[int, str]:
    require_admin(session, actor)
    return budgets.project_choices(session)


def set_budget(session: Session, actor: UserView, scope: Scope, monthly: int) -> BudgetStatus:
    """Cap a user's, a project's or the team's spend per calendar month (UTC)."""
    require_admin(session, actor)
    return budgets.set_budget(session, scope, monthly, actor=actor.email)


def clear_budget(session: Session, actor: UserView, scope: Scope) -> bool:
    require_admin(session, actor)
    return budgets.clear_budget(session, scope, actor=actor.email)


# ---------------------------------------------------------------------------------------------
# Credit costs


def credit_costs(session: Session, actor: UserView) -> CostsView:
    require_admin(session, actor)
    row = session.get(Setting, credits.COSTS_SETTING_KEY)
    return CostsView(
        costs=credits.load_costs(session),
        updated_at=None if row is None else row.updated_at,
        updated_by=None if row is None else row.updated_by,
    )


def update_credit_costs(session: Session, actor: UserView, raw: dict[str, Any]) -> CreditCosts:
    """Validate and save CREDIT_COSTS (an audit event records old and new values). Refused
    with a RequestValidationError naming each bad field, e.g. {"image.hd.wide": "must be a
    whole number of credits"}."""
    require_admin(session, actor)
    if not isinstance(raw, dict):
        raise RequestValidationError({"costs": "must be a mapping like CREDIT_COSTS"})
    problems = dict(_leaf_problems(raw))
    if problems:
        raise RequestValidationError(problems)
    return credits.save_costs(session, raw, actor=actor.email)


def _leaf_problems(value: Any, path: str = "") -> list[tuple[str, str]]:
    """Leaves that are not whole numbers of credits: pydantic would take True as 1 and "5" as 5,
    which an editor should not."""
    if isinstance(value, dict):
        return [
            problem
            for key, child in value.items()
            for problem in _leaf_problems(child, f"{path}.{key}" if path else str(key))
        ]
    if isinstance(value, bool) or not isinstance(value, int | float):
        return [(path or "costs", f"must be a whole number of credits, not {value!r}")]
    if isinstance(value, float) and not value.is_integer():
        return [(path, f"must be a whole number of credits, not {value!r}")]
    return []


def cost_fields(costs: dict[str, Any], path: str = "") -> dict[str, Any]:
    """The nested costs as one field per leaf: {"image.hd.wide": 6, ...}."""
    fields: dict[str, Any] = {}
    for key, child in costs.items():
        name = f"{path}.{key}" if path else key
        fields |= cost_fields(child, name) if isinstance(child, dict) else {name: child}
    return fields


def costs_from_fields(typed: dict[str, str]) -> dict[str, Any]:
    """The nested costs back from the editor's typed fields. A field that reads as a number
    becomes one; anything else is kept as typed, so validation names the field."""
    costs: dict[str, Any] = {}
    for path, text in typed.items():
        *parents, leaf = path.split(".")
        node = costs
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = _number_or_text(text)
    return costs


def _number_or_text(text: str) -> Any:
    for number in (int, float):
        try:
            return number(text.strip())
        except ValueError:
            pass
    return text


@dataclass(frozen=True)
class CostChange:
    path: str  # e.g. "image.hd.wide"
    old: Any
    new: Any


def cost_changes(entry: AuditEntry) -> list[CostChange]:
    """What one credit-costs audit event changed, field by field."""
    before = cost_fields(entry.details.get("old", {}))
    after = cost_fields(entry.details.get("new", {}))
    return [
        CostChange(path, old, after.get(path))
        for path, old in before.items()
        if after.get(path) != old
    ]


def audit_log(
    session: Session,
    actor: UserView,
    *,
    action_prefix: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[AuditEntry]:
    """Admin actions that left no ledger row (cost edits, user changes), newest first."""
    require_admin(session, actor)
    query = select(AuditEvent).order_by(AuditEvent.at.desc(), AuditEvent.id.desc())
    if action_prefix:
        query = query.where(AuditEvent.action.startswith(action_prefix, autoescape=True))
    rows = session.execute(query.offset(offset).limit(limit)).scalars()
    return [view_of(AuditEntry, r) for r in rows]


# ---------------------------------------------------------------------------------------------
# User management


def create_user(
    session: Session,
    actor: UserView,
    email: str,
    *,
    role: Role = Role.USER,
    password: str | None = None,
    display_name: str = "",
    starting_credits: int = 0,
) -> CreatedUser:
    """Create an account (with a generated password when none is given, to show once) and its
    starting grant, a ledger row in the admin's name."""
    require_admin(session, actor)
    if starting_credits:
        starting_credits = _credits(starting_credits, field="starting_credits")
    generated = None if password else secrets.token_urlsafe(12)
    user = auth.create_user(
        session,
        email,
        password=password or generated,
        role=Role(role),
        starting_credits=starting_credits,
        actor=actor.email,
    )
    if display_name.strip():
        name = clean_name(display_name, "display_name", DISPLAY_NAME_MAX_CHARS)
        session.get_one(User, user.id).display_name = name
        session.flush()
    _audit(
        session,
        actor,
        "user.create",
        user.id,
        {"email": user.email, "role": user.role.value, "starting_credits": starting_credits},
    )
    return CreatedUser(user=auth.get_user(session, user.id), generated_password=generated)


def set_active(session: Session, actor: UserView, user_id: int, active: bool) -> UserView:
    """Deactivate (no sign-in, no new runs) or reactivate an account. The last active admin
    cannot be deactivated."""
    require_admin(session, actor)
    user = _user(session, user_id)
    if user.is_active == active:
        return auth.get_user(session, user_id)
    if not active and user.role == Role.ADMIN.value:
        _keep_an_admin(session, user, "is_active")
    user.is_active = active
    if not active:
        sessions.revoke_all(session, user_id)  # signed out in every browser at once
    session.flush()
    _audit(session, actor, "user.reactivate" if active else "user.deactivate", user_id, {})
    return auth.get_user(session, user_id)


def set_role(session: Session, actor: UserView, user_id: int, role: Role) -> UserView:
    """Make an account an admin or a user. The last active admin cannot be demoted."""
    require_admin(session, actor)
    role = Role(role)
    user = _user(session, user_id)
    if user.role == role.value:
        return auth.get_user(session, user_id)
    if role is Role.USER and user.is_active:
        _keep_an_admin(session, user, "role")
    old = user.role
    user.role = role.value
    session.flush()
    _audit(session, actor, "user.role", user_id, {"old": old, "new": role.value})
    return auth.get_user(session, user_id)


def _keep_an_admin(session: Session, leaving: User, field: str) -> None:
    """Refuse when `leaving` is the only active admin. The admin rows are locked first, so two
    admins demoting each other at once cannot both succeed (SQLite's write transactions are
    serial already)."""
    admins = session.execute(
        select(User.id)
        .where(User.role == Role.ADMIN.value, User.is_active.is_(True))
        .with_for_update()
    ).scalars()
    if set(admins) <= {leaving.id}:
        raise RequestValidationError(
            {field: f"{leaving.email} is the last active admin; make another admin first"}
        )


# ---------------------------------------------------------------------------------------------
# Helpers


def _user(session: Session, user_id: int) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise NotFoundError(f"user {user_id} does not exist")
    return user


def _credits(amount: Any, *, field: str = "amount") -> int:
    return credits.checked_amount(amount, field, maximum=MAX_CREDITS_PER_MOVE)


def _reason(reason: str) -> str:
    reason = (reason or "").strip()
    if not reason:
        raise RequestValidationError({"reason": "is required"})
    if len(reason) > REASON_MAX_CHARS:
        raise RequestValidationError({"reason": f"is too long (at most {REASON_MAX_CHARS})"})
    return reason


def _audit(
    session: Session, actor: UserView, action: str, user_id: int, details: dict[str, Any]
) -> None:
    session.add(
        AuditEvent(actor=actor.email, action=action, target=f"user:{user_id}", details=details)
    )
