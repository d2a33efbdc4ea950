"""The API's `Idempotency-Key`: a retried start within WINDOW returns the run the key started
(one run, one charge); once WINDOW has passed the key is free again and may start a new run.
The caller owns the transaction, as in core.credits; `now` is passed in so the window can be
tested without waiting a day."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from core.models import IdempotencyKey

# "At least 24 h", as the API promises; longer would only keep keys nobody retries any more.
WINDOW = timedelta(hours=24)
KEY_MAX_CHARS = 200


def remembered(session: Session, user_id: int, key: str, now: datetime) -> str | None:
    """The run `key` started within the window before `now`, if any."""
    return session.execute(
        select(IdempotencyKey.workflow_id).where(
            IdempotencyKey.user_id == user_id,
            IdempotencyKey.key == key,
            IdempotencyKey.created_at > now - WINDOW,
        )
    ).scalar()


def remember(session: Session, user_id: int, key: str, workflow_id: str, now: datetime) -> None:
    """Tie `key` to the run just created, replacing a tie whose window has passed. A start
    racing with the same key fails on the primary key here, and its transaction rolls back."""
    session.execute(
        delete(IdempotencyKey).where(
            IdempotencyKey.user_id == user_id,
            IdempotencyKey.key == key,
            IdempotencyKey.created_at <= now - WINDOW,
        ),
        execution_options={"synchronize_session": False},
    )
    session.add(IdempotencyKey(user_id=user_id, key=key, workflow_id=workflow_id, created_at=now))
    session.flush()
