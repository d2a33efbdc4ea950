"""The inbox: what a user should hear about — a run of theirs ended, a budget crossed a
threshold, an admin moved their credits.

Each entry is written by the code of the event, in the event's transaction, so it exists exactly
when the event does; its unique key (the event's, plus the recipient) makes a retried event
write it once. Titles and bodies may quote user text (prompts, reasons): pages show them
literally.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from core.clock import utcnow
from core.db import insert_once
from core.models import CreditTransaction, Notification, User, Workflow, view_of
from core.states import WorkflowStatus

TITLE_MAX_CHARS = 200
PROMPT_PREVIEW_CHARS = 120


class NoticeKind(StrEnum):
    RUN_COMPLETED = "run_completed"
    RUN_FAILED = "run_failed"
    RUN_CANCELLED = "run_cancelled"
    BUDGET_ALERT = "budget_alert"
    CREDITS = "credits"  # a grant, an adjustment or an admin's refund: a ledger row


RUN_KINDS = {
    WorkflowStatus.COMPLETED: NoticeKind.RUN_COMPLETED,
    WorkflowStatus.FAILED: NoticeKind.RUN_FAILED,
    WorkflowStatus.CANCELLED: NoticeKind.RUN_CANCELLED,
}


@dataclass(frozen=True)
class Notice:
    id: int
    kind: str
    title: str
    body: str
    link: str
    created_at: datetime
    read_at: datetime | None

    @property
    def is_read(self) -> bool:
        return self.read_at is not None

    @property
    def run_id(self) -> str | None:
        kind, _, target = self.link.partition(":")
        return target if kind == "run" else None

    @property
    def ledger_id(self) -> int | None:
        kind, _, target = self.link.partition(":")
        return int(target) if kind == "ledger" else None


def run_link(workflow_id: str) -> str:
    return f"run:{workflow_id}"


def ledger_link(entry_id: int) -> str:
    return f"ledger:{entry_id}"


# ---------------------------------------------------------------------------------------------
# Writing (inside the event's transaction)


def notify(
    session: Session,
    user_ids: Iterable[int],
    *,
    kind: NoticeKind,
    title: str,
    body: str,
    link: str,
    key: str,
) -> int:
    """One entry per recipient (duplicates in `user_ids` count once); an entry that already
    exists for `key` is left alone. Returns how many were written."""
    written = 0
    for user_id in dict.fromkeys(user_ids):
        row = notice_row(user_id, kind=kind, title=title, body=body, link=link, key=key)
        written += insert_once(session, Notification, row) is not None
    return written


def notice_row(
    user_id: int, *, kind: NoticeKind, title: str, body: str, link: str, key: str
) -> dict[str, Any]:
    """One `notifications` row; its idempotency key is `key` and the recipient."""
    return {
        "user_id": user_id,
        "kind": kind.value,
        "title": title[:TITLE_MAX_CHARS],
        "body": body,
        "link": link,
        "idempotency_key": f"{key}:to:{user_id}",
        "created_at": utcnow(),
    }


def admin_ids(session: Session) -> list[int]:
    rows = session.execute(
        select(User.id).where(User.role == "admin", User.is_active.is_(True)).order_by(User.id)
    )
    return list(rows.scalars())


def run_ended(session: Session, workflow_id: str) -> None:
    """Tell the owner their run ended: completed, or failed/cancelled with what came back (the
    watch page shows the receipt)."""
    run = session.execute(
        select(
            Workflow.user_id,
            Workflow.status,
            Workflow.image_prompt,
            Workflow.cost_credits,
            Workflow.error_message,
        ).where(Workflow.id == workflow_id)
    ).one()
    refunded = session.execute(
        select(CreditTransaction.amount).where(
            CreditTransaction.idempotency_key == f"refund:{workflow_id}"
        )
    ).scalar()
    row = run_ended_notice(
        workflow_id,
        user_id=run.user_id,
        status=WorkflowStatus(run.status),
        image_prompt=run.image_prompt,
        cost_credits=run.cost_credits,
        refunded=refunded or 0,
        error_message=run.error_message,
    )
    insert_once(session, Notification, row)


def run_ended_notice(
    workflow_id: str,
    *,
    user_id: int,
    status: WorkflowStatus,
    image_prompt: str,
    cost_credits: int,
    refunded: int = 0,
    error_message: str | None = None,
) -> dict[str, Any]:
    """The inbox row telling a run's owner how it ended (a runner completing the run writes it
    in its own one-statement write: core.run_writes)."""
    if status is WorkflowStatus.COMPLETED:
        title = f"Your run finished ({cost_credits:,} credits)"
    else:
        ended = "failed" if status is WorkflowStatus.FAILED else "was cancelled"
        back = f"; {refunded:,} credits refunded" if refunded else ""
        title = f"Your run {ended}{back}"
    body = image_prompt[:PROMPT_PREVIEW_CHARS]
    if status is WorkflowStatus.FAILED and error_message:
        body += f"\n{error_message}"
    return notice_row(
        user_id,
        kind=RUN_KINDS[status],
        title=title,
        body=body,
        link=run_link(workflow_id),
        key=f"run:{workflow_id}:{status.value}",
    )


def ledger_moved(session: Session, entry: CreditTransaction) -> None:
    """Tell a user someone moved their credits (a grant, an adjustment, an admin's refund)."""
    session.flush()  # the entry's id is the link
    amount = entry.amount
    if entry.kind == "refund":
        title = f"{amount:,} credits refunded for a run"
    elif entry.kind == "grant":
        title = f"You received {amount:,} credits"
    else:
        title = f"Your balance was adjusted by {amount:+,} credits"
    notify(
        session,
        [entry.user_id],
        kind=NoticeKind.CREDITS,
        title=title,
        body=f"{entry.reason}\nBy {entry.actor}; balance after: {entry.balance_after:,}.",
        link=ledger_link(entry.id),
        key=f"ledger:{entry.id}",
    )


# ---------------------------------------------------------------------------------------------
# Reading and marking read


def unread_count(session: Session, user_id: int) -> int:
    return session.execute(
        select(func.count()).where(Notification.user_id == user_id, Notification.read_at.is_(None))
    ).scalar_one()


def recent(session: Session, user_id: int, *, limit: int = 50) -> list[Notice]:
    """The user's newest entries first."""
    rows = session.execute(
        select(Notification)
        .where(Notification.user_id == user_id)
        .order_by(Notification.id.desc())
        .limit(limit)
    ).scalars()
    return [view_of(Notice, row) for row in rows]


def mark_read(session: Session, user_id: int, notice_ids: Sequence[int] | None = None) -> int:
    """Mark the user's entries read (all of them when `notice_ids` is None); another user's
    ids are ignored. Returns how many changed."""
    statement = update(Notification).where(
        Notification.user_id == user_id, Notification.read_at.is_(None)
    )
    if notice_ids is not None:
        statement = statement.where(Notification.id.in_(list(notice_ids)))
    result = session.execute(
        statement.values(read_at=utcnow()), execution_options={"synchronize_session": False}
    )
    return result.rowcount
