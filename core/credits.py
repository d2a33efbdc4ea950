"""The credit ledger: append-only transactions plus a cached balance on the user row.

Invariant: users.balance == sum(credit_transactions.amount) for every user. Every function here
changes both in the caller's transaction, with a single conditional UPDATE on the balance, so
concurrent starts can never overdraw and concurrent grants never lose an update.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import func, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session

from core import inbox, metrics
from core.clock import utcnow
from core.errors import InsufficientCreditsError, NotFoundError, RequestValidationError
from core.models import AuditEvent, CreditTransaction, Setting, User, Workflow, view_of
from core.schemas import WorkflowRequest

COSTS_SETTING_KEY = "credit_costs"
COSTS_AUDIT_ACTION = "credit_costs.update"
SYSTEM_ACTOR = "system"
RESERVE_REASON = "credits reserved at start"


class TransactionKind(StrEnum):
    GRANT = "grant"
    RESERVE = "reserve"
    REFUND = "refund"
    ADJUST = "adjust"
    # The still's share of a reservation, given back when a run reuses a still already paid
    # for (core.reuse). Not a refund: the run goes on, and delivers.
    RELEASE = "release"


# One bound for every amount from every entry (CLI, pages, API): grants, adjustments, costs and
# budgets, and for every balance after a move. It keeps balances and ledger sums far inside the
# 32-bit INTEGER columns of both databases (and exact, never floating point, on SQLite).
MAX_AMOUNT = 1_000_000_000
MAX_BALANCE = MAX_AMOUNT

Credits = Field(ge=0, le=10_000)


def checked_amount(value: object, field: str, *, maximum: int = MAX_AMOUNT) -> int:
    """`value` as a positive whole number of credits no larger than `maximum` (itself never
    above MAX_AMOUNT), or a RequestValidationError naming `field`."""
    maximum = min(maximum, MAX_AMOUNT)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestValidationError({field: "must be a whole number of credits"})
    if not 0 < value <= maximum:
        raise RequestValidationError({field: f"must be between 1 and {maximum:,}"})
    return value


def checked_change(value: object, field: str) -> int:
    """`value` as a signed, non-zero change of credits (an adjustment) no larger than MAX_AMOUNT
    either way, or a RequestValidationError naming `field`."""
    if type(value) is not int:  # bool is refused too
        raise RequestValidationError({field: "must be a whole number of credits"})
    if value == 0:
        raise RequestValidationError({field: "must not be zero"})
    if abs(value) > MAX_AMOUNT:
        raise RequestValidationError({field: f"must be between -{MAX_AMOUNT:,} and {MAX_AMOUNT:,}"})
    return value


class ImageCosts(BaseModel):
    model_config = ConfigDict(extra="forbid")
    square: int = Credits  # 1024x1024
    wide: int = Credits  # 1792x1024 or 1024x1792


class VideoCostsPerSecond(BaseModel):
    model_config = ConfigDict(extra="forbid")
    silent: int = Credits
    audio: int = Credits


class CreditCosts(BaseModel):
    """CREDIT_COSTS: what a run costs, by image quality/size and video resolution/audio."""

    model_config = ConfigDict(extra="forbid")
    image: dict[Literal["standard", "hd"], ImageCosts]  # by quality
    video_per_second: dict[Literal["720p", "1080p"], VideoCostsPerSecond]  # by resolution


DEFAULT_CREDIT_COSTS = CreditCosts(
    image={"standard": ImageCosts(square=2, wide=3), "hd": ImageCosts(square=4, wide=6)},
    video_per_second={
        "720p": VideoCostsPerSecond(silent=1, audio=2),
        "1080p": VideoCostsPerSecond(silent=2, audio=3),
    },
)


def cost_of(request: WorkflowRequest, costs: CreditCosts) -> int:
    """Credits one run of `request` costs (pure)."""
    per_second = costs.video_per_second[request.video_config.resolution]
    rate = per_second.audio if request.video_config.generate_audio else per_second.silent
    return image_cost_of(request, costs) + rate * request.video_config.duration_s


def image_cost_of(request: WorkflowRequest, costs: CreditCosts) -> int:
    """The still's share of `cost_of` (pure): what reusing a still saves."""
    image = costs.image[request.image_config.quality]
    return image.square if request.image_config.size == "1024x1024" else image.wide


@dataclass(frozen=True)
class CostsRead:
    """Costs as read, with the stored value they came from (None: no row, the defaults)."""

    stored: dict[str, Any] | None
    costs: CreditCosts


# What this process read last: a run's start in one statement prices the run with it, and the
# statement checks the stored value is still this one (core.run_start).
_last_read: CostsRead | None = None


def load_costs(session: Session) -> CreditCosts:
    global _last_read
    row = session.get(Setting, COSTS_SETTING_KEY)
    stored = None if row is None else row.value
    costs = DEFAULT_CREDIT_COSTS if stored is None else CreditCosts.model_validate(stored)
    _last_read = CostsRead(stored, costs)
    return costs


def costs_last_read() -> CostsRead | None:
    return _last_read


def save_costs(session: Session, raw: dict, *, actor: str) -> CreditCosts:
    """Validate and store new costs. The settings row records who changed it last, and every
    change appends an audit event with the old and new values; saving the same costs again
    changes nothing."""
    try:
        costs = CreditCosts.model_validate(raw)
    except ValidationError as exc:
        raise RequestValidationError(
            {".".join(map(str, e["loc"])): e["msg"] for e in exc.errors()}
        ) from None
    missing = sorted(
        ({"standard", "hd"} - costs.image.keys())
        | ({"720p", "1080p"} - costs.video_per_second.keys())
    )
    if missing:
        raise RequestValidationError({"costs": f"missing entries {missing}"})
    # Locked, so two admins saving at once are audited against the value each replaced.
    row = session.get(Setting, COSTS_SETTING_KEY, with_for_update=True)
    old = DEFAULT_CREDIT_COSTS.model_dump() if row is None else row.value
    new = costs.model_dump()
    if old == new:
        return costs
    if row is None:
        row = Setting(key=COSTS_SETTING_KEY, value={})
        session.add(row)
    row.value, row.updated_at, row.updated_by = new, utcnow(), actor
    session.add(
        AuditEvent(
            actor=actor,
            action=COSTS_AUDIT_ACTION,
            target=f"settings:{COSTS_SETTING_KEY}",
            details={"old": old, "new": new},
        )
    )
    return costs


@dataclass(frozen=True)
class LedgerEntry:
    id: int
    kind: str
    amount: int
    balance_after: int
    workflow_id: str | None
    actor: str
    reason: str
    created_at: datetime


def _apply(
    session: Session,
    *,
    user_id: int,
    amount: int,
    kind: TransactionKind,
    actor: str,
    reason: str,
    workflow_id: str | None = None,
    idempotency_key: str | None = None,
) -> CreditTransaction:
    """Move `amount` (signed) in one conditional UPDATE and append its ledger row (returned).
    The same condition keeps the new balance within 0..MAX_BALANCE, so no race can push it
    past either."""
    if abs(amount) > MAX_AMOUNT:
        raise RequestValidationError({"amount": f"must be at most {MAX_AMOUNT:,} credits"})
    new_balance = session.execute(
        update(User)
        .where(
            User.id == user_id,
            User.balance + amount >= 0,
            User.balance + amount <= MAX_BALANCE,
        )
        .values(balance=User.balance + amount)
        .returning(User.balance)
    ).scalar_one_or_none()
    if new_balance is None:
        current = session.execute(select(User.balance).where(User.id == user_id)).scalar()
        if current is None:
            raise NotFoundError(f"user {user_id} does not exist")
        if amount > 0:
            raise RequestValidationError(
                {"amount": f"would take the balance ({current:,}) above {MAX_BALANCE:,}"}
            )
        raise InsufficientCreditsError(needed=-amount, balance=current)
    entry = CreditTransaction(
        user_id=user_id,
        kind=kind.value,
        amount=amount,
        balance_after=new_balance,
        workflow_id=workflow_id,
        actor=actor,
        reason=reason,
        idempotency_key=idempotency_key,
    )
    session.add(entry)
    return entry


def grant(session: Session, user_id: int, amount: int, *, actor: str, reason: str) -> int:
    """Add credits (amount > 0) and return the new balance."""
    checked_amount(amount, "amount")
    entry = _apply(
        session,
        user_id=user_id,
        amount=amount,
        kind=TransactionKind.GRANT,
        actor=actor,
        reason=reason,
    )
    inbox.ledger_moved(session, entry)
    return entry.balance_after


def adjust(session: Session, user_id: int, amount: int, *, actor: str, reason: str) -> int:
    """An admin correction, either sign; never takes a balance below zero."""
    checked_change(amount, "amount")
    if not reason.strip():
        raise RequestValidationError({"reason": "is required for an adjustment"})
    entry = _apply(
        session,
        user_id=user_id,
        amount=amount,
        kind=TransactionKind.ADJUST,
        actor=actor,
        reason=reason,
    )
    inbox.ledger_moved(session, entry)
    return entry.balance_after


def reserve(session: Session, user_id: int, amount: int, *, workflow_id: str, actor: str) -> int:
    """Take a run's credits up front; raises InsufficientCreditsError rather than overdraw."""
    entry = _apply(
        session,
        user_id=user_id,
        amount=-amount,
        kind=TransactionKind.RESERVE,
        actor=actor,
        reason=RESERVE_REASON,
        workflow_id=workflow_id,
        idempotency_key=f"reserve:{workflow_id}",
    )
    metrics.credits_reserved(session, amount)
    return entry.balance_after


def refund(session: Session, workflow_id: str, *, reason: str, actor: str = SYSTEM_ACTOR) -> int:
    """Give a failed or cancelled run's credits back, exactly once. Returns credits refunded.
    A refund an admin gives (not the system's, which the run's own end reports) goes into the
    owner's inbox."""
    entry = _give_back_once(
        session,
        workflow_id,
        Workflow.cost_credits,
        kind=TransactionKind.REFUND,
        actor=actor,
        reason=reason,
    )
    if entry is None:
        return 0
    metrics.credits_refunded(session, entry.amount)
    if actor != SYSTEM_ACTOR:
        inbox.ledger_moved(session, entry)
    return entry.amount


def release_reused_still(session: Session, workflow_id: str, *, source_id: str) -> int:
    """Give back the still's share of a run's reservation when it reused the still of run
    `source_id`, exactly once; returns the credits given back.

    The run's cost_credits drops by the same amount in the same transaction, so a later
    failure refunds only what is still held: reserve + release + refund always nets to zero
    for a run that delivers nothing, and to the video's price for one that delivers.
    """
    entry = _give_back_once(
        session,
        workflow_id,
        Workflow.image_credits,
        kind=TransactionKind.RELEASE,
        actor=SYSTEM_ACTOR,
        reason=f"still reused from run {source_id}",
    )
    if entry is None:
        return 0
    metrics.credits_released(session, entry.amount)
    session.execute(
        update(Workflow)
        .where(Workflow.id == workflow_id)
        .values(cost_credits=Workflow.cost_credits - entry.amount),
        execution_options={"synchronize_session": False},
    )
    return entry.amount


def _give_back_once(
    session: Session,
    workflow_id: str,
    amount_column: InstrumentedAttribute[int],
    *,
    kind: TransactionKind,
    actor: str,
    reason: str,
) -> LedgerEntry | None:
    """Credit the run's owner with the run's `amount_column`, once per kind and run (the
    idempotency key is `<kind>:<run>`); None when already given back or nothing is held.

    The workflow row is locked first (a no-op on SQLite, whose write transactions are already
    serial), so two concurrent calls queue and the second finds the first's ledger row; the
    unique idempotency key is the last line of defence."""
    workflow = session.execute(
        select(Workflow.user_id, amount_column.label("amount"))
        .where(Workflow.id == workflow_id)
        .with_for_update()
    ).one()
    key = f"{kind.value}:{workflow_id}"
    already = session.execute(
        select(CreditTransaction.id).where(CreditTransaction.idempotency_key == key)
    ).first()
    if already or workflow.amount == 0:
        return None
    return _apply(
        session,
        user_id=workflow.user_id,
        amount=workflow.amount,
        kind=kind,
        actor=actor,
        reason=reason,
        workflow_id=workflow_id,
        idempotency_key=key,
    )


def release_entry(session: Session, workflow_id: str) -> LedgerEntry | None:
    """The ledger row of a reused still's release, for the receipt."""
    return _entry_by_key(session, f"release:{workflow_id}")


def refund_entry(session: Session, workflow_id: str) -> LedgerEntry | None:
    """The refund ledger row of a workflow, for the receipt shown on failed/cancelled runs."""
    return _entry_by_key(session, f"refund:{workflow_id}")


def _entry_by_key(session: Session, key: str) -> LedgerEntry | None:
    row = session.execute(
        select(CreditTransaction).where(CreditTransaction.idempotency_key == key)
    ).scalar_one_or_none()
    return None if row is None else view_of(LedgerEntry, row)


def entry_of(session: Session, user_id: int, entry_id: int) -> LedgerEntry | None:
    """One of the user's own ledger rows (an inbox entry links to it); None for anyone else's."""
    row = session.execute(
        select(CreditTransaction).where(
            CreditTransaction.id == entry_id, CreditTransaction.user_id == user_id
        )
    ).scalar_one_or_none()
    return None if row is None else view_of(LedgerEntry, row)


def history(session: Session, user_id: int, *, limit: int = 200) -> list[LedgerEntry]:
    rows = session.execute(
        select(CreditTransaction)
        .where(CreditTransaction.user_id == user_id)
        .order_by(CreditTransaction.id.desc())
        .limit(limit)
    ).scalars()
    return [view_of(LedgerEntry, row) for row in rows]


def balance_mismatches(session: Session) -> list[tuple[int, int, int]]:
    """Users whose cached balance differs from their ledger sum: (user_id, cached, ledger)."""
    ledger = (
        select(CreditTransaction.user_id, func.sum(CreditTransaction.amount).label("total"))
        .group_by(CreditTransaction.user_id)
        .subquery()
    )
    total = func.coalesce(ledger.c.total, 0)
    rows = session.execute(
        select(User.id, User.balance, total)
        .outerjoin(ledger, ledger.c.user_id == User.id)
        .where(User.balance != total)
    )
    return [(r[0], r[1], int(r[2])) for r in rows]
