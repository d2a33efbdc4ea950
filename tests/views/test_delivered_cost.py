"""The true cost of a delivered video and the stills reused, against a small hand-built history
with hand-computed answers, on SQLite and Postgres alike."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from core.models import ApiCall, CreditTransaction, Project, User, Workflow
from core.views import monitoring
from core.views.monitoring import DEFAULT_MODEL_LABEL, DeliveredCost, MonitoringFilter


def at(day: int, hour: int = 0, second: float = 0) -> datetime:
    return datetime(2026, 1, day, hour, tzinfo=UTC) + timedelta(seconds=second)


RANGE = MonitoringFilter(since=at(5), until=at(8))  # three days, daily buckets
VEO = "veo3.1"


@pytest.fixture
def history(db) -> dict[str, int]:
    """Alice (project "Ads") on VEO, Bob on the installation's default model:

    d1  alice Ads  completed  5 Jan 10:00  reserve 19                image 0.04  video 3.20
    d2  alice Ads  failed     5 Jan 11:00  reserve 19, refund 19     image 0.04  (video refused)
    d3  alice Ads  completed  5 Jan 12:00  reserve 19, release 3     still reused  video 3.20
    d4  bob        completed  6 Jan 09:00  reserve 11                image 0.04 on a 2nd attempt
                                                                     video 0.80
    d5  bob        cancelled  6 Jan 10:00  reserve 11, refund 11     image 0.04
    d6  bob        failed     7 Jan 08:00  reserve 11, refund 11     image 0.04  video 0.80
    d7  alice      running    7 Jan 15:00  reserve 19                image 0.04  (in flight)
    d8  alice      completed  1 Jan 12:00  reserve 100               video 9.00  (out of range)
    """
    with db.begin() as s:
        alice = User(email="alice@example.com", role="user", balance=0)
        bob = User(email="bob@example.com", role="user", balance=0)
        s.add_all([alice, bob])
        s.flush()
        ads = Project(user_id=alice.id, name="Ads")
        s.add(ads)
        s.flush()
        runs = {
            "d1": (alice, ads.id, "completed", at(5, 10), VEO),
            "d2": (alice, ads.id, "failed", at(5, 11), VEO),
            "d3": (alice, ads.id, "completed", at(5, 12), VEO),
            "d4": (bob, None, "completed", at(6, 9), None),
            "d5": (bob, None, "cancelled", at(6, 10), None),
            "d6": (bob, None, "failed", at(7, 8), None),
            "d7": (alice, None, "running", at(7, 15), VEO),
            "d8": (alice, None, "completed", at(1, 12), VEO),
        }
        # What each run holds now, as the engine keeps it: its reservation, less a reused
        # still's release (d3); refunds leave it as it was.
        held = {"d3": 16, "d8": 100} | {w: 11 for w in ("d4", "d5", "d6")}
        for wid, (user, project, status, created, model) in runs.items():
            s.add(
                Workflow(
                    id=wid,
                    user_id=user.id,
                    project_id=project,
                    client_key=wid,
                    status=status,
                    image_prompt="i",
                    video_prompt="v",
                    request={"videoModel": model},
                    video_model=model,
                    cost_credits=held.get(wid, 19),
                    created_at=created,
                )
            )
        s.flush()

        def call(wid, provider, operation, usd="0", outcome="ok", attempt=1):
            s.add(
                ApiCall(
                    workflow_id=wid,
                    provider=provider,
                    operation=operation,
                    attempt=attempt,
                    started_at=runs[wid][3] + timedelta(seconds=5),
                    duration_ms=100,
                    outcome=outcome,
                    cost_usd=Decimal(usd),
                )
            )

        call("d1", "openai", "generate", "0.04")
        call("d1", "fal", "result", "3.20")
        call("d2", "openai", "generate", "0.04")
        call("d2", "fal", "submit", outcome="permanent")
        call("d3", "cache", "reuse")
        call("d3", "fal", "status", outcome="transient")
        call("d3", "fal", "result", "3.20")
        call("d4", "openai", "generate", outcome="transient")
        call("d4", "openai", "generate", "0.04", attempt=2)
        call("d4", "fal", "result", "0.80")
        call("d5", "openai", "generate", "0.04")
        call("d5", "fal", "cancel")
        call("d6", "openai", "generate", "0.04")
        call("d6", "fal", "result", "0.80")
        call("d7", "openai", "generate", "0.04")
        call("d8", "fal", "result", "9.00")

        balances = {alice.id: 1000, bob.id: 1000}
        for user in (alice, bob):
            s.add(_move(user, "grant", 1000, at(1), None, 1000))

        def move(wid, kind, amount, seconds=1):
            user = runs[wid][0]
            balances[user.id] += amount
            when = runs[wid][3] + timedelta(seconds=seconds)
            s.add(_move(user, kind, amount, when, wid, balances[user.id]))

        for wid in runs:
            move(wid, "reserve", -(held.get(wid, 19) + (3 if wid == "d3" else 0)), 0)
        move("d2", "refund", 19)
        move("d3", "release", 3)
        move("d5", "refund", 11)
        move("d6", "refund", 11)
        alice.balance, bob.balance = balances[alice.id], balances[bob.id]
        return {"alice": alice.id, "bob": bob.id, "ads": ads.id}


def _move(user, kind, amount, when, wid, balance_after) -> CreditTransaction:
    return CreditTransaction(
        user_id=user.id,
        kind=kind,
        amount=amount,
        balance_after=balance_after,
        workflow_id=wid,
        actor="system",
        reason=kind,
        idempotency_key=f"{kind}:{wid}" if wid else None,
        created_at=when,
    )


def figures(cost: DeliveredCost) -> tuple:
    """Everything a row says, rounded where it is a ratio."""
    per_video = None if cost.credits_per_video is None else round(cost.credits_per_video, 4)
    usd = None if cost.usd_per_video is None else round(cost.usd_per_video, 4)
    share = None if cost.refunded_share is None else round(cost.refunded_share, 4)
    return (
        cost.label,
        cost.runs,
        cost.delivered,
        cost.credits_spent,
        per_video,
        cost.list_usd,
        usd,
        cost.waste_usd,
        cost.waste_credits,
        share,
        cost.credits_saved,
    )


# label, runs, delivered, credits spent, credits/video, USD, USD/video, waste USD,
# waste credits, refunded share, credits saved by reuse -- computed by hand from the history:
# alice: reserved 57, refunded 19, released 3 -> 35 over 2 videos; USD 3.24 + 0.04 + 3.20.
# bob: reserved 33, refunded 22 -> 11 over 1 video; USD 0.84 + 0.04 + 0.84, 0.84 delivered.
ALICE = (6.48, 3.24, 0.04)
BOB = (1.72, 1.72, 0.88)


def test_the_cost_of_a_delivered_video_counts_every_failed_and_cancelled_attempt(db, history):
    with db.read() as s:
        costs = monitoring.delivered_cost(s, RANGE)
    rows, total = costs.by_time, costs.total
    # 6 finished runs (d7 is in flight, d8 out of range), 3 delivered. Credits: reserved
    # 57 + 33 = 90, refunded 19 + 11 + 11 = 41, released 3: 46 spent, 46 / 3 per video.
    # List price: 8.20 in all, 7.28 of it on the three delivered videos, 0.92 wasted.
    assert figures(total) == (
        "all", 6, 3, 46, round(46 / 3, 4), 8.2, round(8.2 / 3, 4), 0.92, 0, round(41 / 90, 4), 3
    )  # fmt: skip
    assert [c.key for c in rows] == [at(5), at(6), at(7)]
    assert [figures(c)[1:] for c in rows] == [
        (3, 2, 35, 17.5, *ALICE[:2], ALICE[2], 0, round(19 / 57, 4), 3),
        (2, 1, 11, 11.0, 0.88, 0.88, 0.04, 0, 0.5, 0),
        (1, 0, 0, None, 0.84, None, 0.84, 0, 1.0, 0),
    ]


@pytest.mark.parametrize("by", ["model", "user", "project"])
def test_the_cost_per_delivered_video_by_model_user_and_project(db, history, by):
    with db.read() as s:
        rows = monitoring.delivered_cost(s, RANGE).by(by)
    labels = {
        "model": (VEO, DEFAULT_MODEL_LABEL),
        "user": ("alice@example.com", "bob@example.com"),
        "project": ("Ads", "(no project)"),
    }[by]
    assert [figures(c) for c in rows] == [
        (labels[0], 3, 2, 35, 17.5, ALICE[0], ALICE[1], ALICE[2], 0, round(19 / 57, 4), 3),
        (labels[1], 3, 1, 11, 11.0, BOB[0], BOB[1], BOB[2], 0, round(22 / 33, 4), 0),
    ]


def test_narrowed_to_a_user_the_cost_is_that_users_alone(db, history):
    narrowed = MonitoringFilter(since=RANGE.since, until=RANGE.until, user_id=history["bob"])
    with db.read() as s:
        costs = monitoring.delivered_cost(s, narrowed)
    (bob,) = costs.by_user
    assert figures(bob)[1:] == (3, 1, 11, 11.0, *BOB, 0, round(22 / 33, 4), 0)
    assert figures(costs.total)[1:] == figures(bob)[1:]
    assert [c.label for c in costs.by_model] == [DEFAULT_MODEL_LABEL]


def test_cache_hits_and_credits_saved_by_reused_stills(db, history):
    with db.read() as s:
        reuse = monitoring.reuse_stats(s, RANGE)
        kpis = monitoring.kpis(s, RANGE)
        outside = monitoring.reuse_stats(s, MonitoringFilter(since=at(1), until=at(5)))
    assert (reuse.hits, reuse.credits_saved) == (1, 3)
    assert (outside.hits, outside.credits_saved) == (0, 0)
    # The ledger's own view of the range: d7's reserve is in it too (19).
    assert (kpis.credits_reserved, kpis.credits_refunded, kpis.credits_released) == (109, 41, 3)
    assert kpis.credits_spent == 65
