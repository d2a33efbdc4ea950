"""The API's Idempotency-Key window, on a clock the test moves: within 24 h a key returns the run
it started (one charge), after that it may start a new run, and the key then stands for that."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from core import idempotency, workflows
from core.models import CreditTransaction
from core.schemas import parse_request

REQUEST = parse_request({"imagePrompt": "a lighthouse at dusk", "videoPrompt": "slow push in"})
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)


def start(db, user, key: str, now: datetime) -> tuple[str, bool]:
    started = workflows.start_workflow(
        db,
        user_id=user.id,
        request=REQUEST,
        client_key=f"page-{now.timestamp()}-{key}",  # a fresh page key: only the API key ties
        actor=user.email,
        idempotency_key=key,
        now=now,
    )
    return started.workflow_id, started.created


def reserves(db, user) -> list[int]:
    with db.read() as session:
        rows = session.execute(
            select(CreditTransaction.amount).where(
                CreditTransaction.user_id == user.id, CreditTransaction.kind == "reserve"
            )
        )
        return list(rows.scalars())


def test_a_key_keeps_its_run_for_the_whole_window_and_may_start_a_new_one_after(db, make_user):
    assert idempotency.WINDOW >= timedelta(hours=24)
    user = make_user(credits=100)
    first, created = start(db, user, "nightly", T0)
    assert created
    assert start(db, user, "nightly", T0 + idempotency.WINDOW - SECOND) == (first, False)
    assert len(reserves(db, user)) == 1

    second, created = start(db, user, "nightly", T0 + idempotency.WINDOW + SECOND)
    assert created and second != first
    assert start(db, user, "nightly", T0 + idempotency.WINDOW + 2 * SECOND) == (second, False)
    assert len(reserves(db, user)) == 2


def test_keys_are_per_user(db, make_user):
    alice, bob = make_user(), make_user()
    alices, _ = start(db, alice, "same", T0)
    bobs, created = start(db, bob, "same", T0)
    assert created and bobs != alices
