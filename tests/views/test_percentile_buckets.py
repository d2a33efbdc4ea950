"""Percentiles through the rollups' duration buckets: over closed days, partial days and days not
closed yet, the step and provider panels give percentile_cont's figures exactly, as computed here
from the inserted durations, on SQLite and Postgres."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from core.auth import create_user
from core.models import ApiCall, Workflow, WorkflowStep
from core.views import monitoring
from core.views.monitoring import MonitoringFilter
from tests.helpers import a_run
from tests.views.test_monitoring import reference_percentile
from tests.views.test_rollup import hold_a_run_open, rolled_days

DAY0 = datetime(2026, 1, 5, tzinfo=UTC)
DAYS = 6
STEPS = ("validate", "generate_image")
CALLS = (("fal", "status"), ("fal", "result"), ("openai", "generate"))
# Partial first and last days around four whole ones.
RANGE = MonitoringFilter(since=DAY0 + timedelta(hours=7), until=DAY0 + timedelta(days=5, hours=13))


def durations(rng: random.Random, n: int) -> list[int]:
    """Whole milliseconds mixing every kind of bucket: exact ones (below 16 ms), edges of
    doublings and their neighbours, ties, a crowd in one bucket, minutes."""
    edges = [2**k + d for k in range(4, 20) for d in (-1, 0, 1)]
    kinds = [
        lambda: rng.randint(0, 15),
        lambda: rng.choice(edges),
        lambda: 100,
        lambda: rng.randint(128, 143),
        lambda: rng.randint(16, 600_000),
    ]
    return [rng.choice(kinds)() for _ in range(n)]


def seed(db, rng: random.Random) -> tuple[dict, dict]:
    """Completed runs over DAYS days, each with two completed steps and three provider calls of
    random durations; returns ({step: [(started, ms)]}, {(provider, operation): [...]})."""
    steps: dict[str, list] = {name: [] for name in STEPS}
    calls: dict[tuple[str, str], list] = {key: [] for key in CALLS}
    with db.begin() as s:
        user = create_user(s, "p@example.com", starting_credits=0)
        for i in range(DAYS * 40):
            created = DAY0 + timedelta(minutes=36 * i + rng.randint(0, 30))
            run = a_run(
                f"r{i}", user.id, "completed", created, finished_at=created + timedelta(hours=1)
            )
            s.add(run)
            s.flush()  # api_calls has no relationship to order its inserts after the run's
            for position, (name, ms) in enumerate(zip(STEPS, durations(rng, 2), strict=True)):
                started = created + timedelta(seconds=position)
                steps[name].append((started, ms))
                s.add(
                    WorkflowStep(
                        workflow_id=run.id,
                        name=name,
                        position=position,
                        status="completed",
                        started_at=started,
                        finished_at=started + timedelta(milliseconds=ms),
                    )
                )
            for n, ((provider, operation), ms) in enumerate(
                zip(CALLS, durations(rng, 3), strict=True)
            ):
                started = created + timedelta(seconds=10 + n)
                calls[(provider, operation)].append((started, ms))
                call = {"provider": provider, "operation": operation, "duration_ms": ms}
                s.add(ApiCall(workflow_id=run.id, started_at=started, outcome="ok", **call))
    return steps, calls


def in_range(rows: list, flt: MonitoringFilter) -> list[int]:
    return [ms for started, ms in rows if flt.since <= started < flt.until]


def expected_steps(steps: dict, flt: MonitoringFilter) -> dict:
    return {
        name: (len(ms), reference_percentile(ms, 0.5) / 1000, reference_percentile(ms, 0.95) / 1000)
        for name, rows in steps.items()
        if (ms := in_range(rows, flt))
    }


def expected_calls(calls: dict, flt: MonitoringFilter) -> dict:
    return {
        key: (len(ms), reference_percentile(ms, 0.5), reference_percentile(ms, 0.95))
        for key, rows in calls.items()
        if (ms := in_range(rows, flt)) and flt.provider in (None, key[0])
    }


def panels(db, flt: MonitoringFilter) -> tuple[dict, dict]:
    with db.read() as s:
        steps = {d.step: (d.count, d.p50_s, d.p95_s) for d in monitoring.step_durations(s, flt)}
        calls = {
            (p.provider, p.operation): (p.calls, p.p50_ms, p.p95_ms)
            for p in monitoring.provider_performance(s, flt)
        }
    return steps, calls


@pytest.mark.parametrize("seed_value", [3, 4])
def test_percentiles_through_buckets_are_percentile_conts_own(db, seed_value):
    steps, calls = seed(db, random.Random(seed_value))
    ranges = [
        RANGE,
        replace(RANGE, provider="fal"),
        MonitoringFilter(since=DAY0 + timedelta(days=1), until=DAY0 + timedelta(days=4)),
        MonitoringFilter(since=DAY0 + timedelta(days=2, hours=23), until=RANGE.until),
    ]
    for flt in ranges:
        assert panels(db, flt) == (expected_steps(steps, flt), expected_calls(calls, flt))
    assert len(rolled_days(db, "steps")) >= 4 and len(rolled_days(db, "calls")) >= 4

    # Days from the third on are not closed any more: read raw, the same figures.
    with db.read() as s:
        user_id = s.get(Workflow, "r0").user_id
    hold_a_run_open(db, user_id, DAY0 + timedelta(days=2, hours=5))
    for flt in ranges:
        assert panels(db, flt) == (expected_steps(steps, flt), expected_calls(calls, flt))


def test_a_rank_that_left_between_the_counts_and_the_lookups_is_read_whole(db):
    """Counts from one statement, lookups from the next: a step set back from completed in
    between leaves a counted rank unread; that key's percentiles come from its values alone."""
    with db.begin() as s:
        s.add_all(
            ApiCall(
                provider="fal",
                operation="status",
                started_at=RANGE.since,
                outcome="ok",
                duration_ms=ms,
            )
            for ms in (10, 20, 30)
        )
    calls = ApiCall.__table__.c

    def values_of(key: str):
        return select(calls.duration_ms).where(calls.provider == key)

    counted = {"fal": {10: 1, 20: 1, 30: 2}}  # one value of 30 ms gone since
    with db.read() as s:
        found = monitoring._bucketed_percentiles(s, counted, values_of, calls.duration_ms)
    assert found == {
        "fal": {
            "p0": reference_percentile([10, 20, 30], 0.5),
            "p1": reference_percentile([10, 20, 30], 0.95),
        }
    }
