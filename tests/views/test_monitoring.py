"""Every monitoring panel against a small hand-built history with hand-computed answers, on
SQLite and Postgres alike (the same numbers on both is the point)."""

from __future__ import annotations

import math
import random
import shutil
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import create_engine, text

from core.db import Database
from core.errors import RequestValidationError
from core.models import (
    ApiCall,
    Base,
    CreditTransaction,
    Project,
    User,
    WorkflowStep,
)
from core.states import STEP_ORDER
from core.views import monitoring
from core.views.monitoring import Granularity, MonitoringFilter
from tests.helpers import a_run

JAN = datetime(2026, 1, 1, tzinfo=UTC)


def at(day: int, hour: int = 0, minute: int = 0, second: float = 0) -> datetime:
    return datetime(2026, 1, day, hour, minute, tzinfo=UTC) + timedelta(seconds=second)


# The range most tests look at: three days, Monday 5 to Wednesday 7 January 2026.
RANGE = MonitoringFilter(since=at(5), until=at(8))
# Step durations of completed run i (1..4), in seconds: they add up to 10 * i.
STEP_SECONDS = {
    "validate": 0.5,
    "generate_image": 2,
    "upload_image": 0.5,
    "generate_video": 5,
    "upload_video": 1,
    "finalize": 1,
}


def reference_percentile(values: list[float], p: float) -> float:
    """The definition both databases implement (percentile_cont)."""
    ordered = sorted(values)
    h = p * (len(ordered) - 1)
    lo, hi = math.floor(h), math.ceil(h)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (h - lo)


@pytest.fixture
def history(db):
    return build_history(db)


def build_history(db) -> dict[str, int]:
    """Alice (project "Ads") and Bob, nine runs, their steps, calls and ledger:

    w1..w4  alice, completed, created 5 Jan 10:00..13:00, run 10/20/30/40 s (w1, w2 in "Ads")
    w5      bob, failed at generate_image (content_policy), 6 Jan 09:00
    w6      bob, cancelled while queued, 6 Jan 12:00
    w7      alice, running now (validate done in 0.3 s), 7 Jan 15:00
    w9      bob, failed while queued (stale, no step failed), 7 Jan 08:00
    w8      alice, completed 1 Jan: outside the range, with outlandish numbers
    """
    with db.begin() as s:
        alice = User(email="alice@example.com", role="user", balance=0)
        bob = User(email="bob@example.com", role="user", balance=0)
        s.add_all([alice, bob])
        s.flush()
        ads = Project(user_id=alice.id, name="Ads")
        s.add(ads)
        s.flush()

        def run(wid, user, status, created, *, project=None, cost=10, **kw):
            s.add(a_run(wid, user.id, status, created, project_id=project, cost_credits=cost, **kw))

        def step(wid, position, status, started=None, seconds=None, **kw):
            finished = started + timedelta(seconds=seconds) if seconds is not None else None
            s.add(
                WorkflowStep(
                    workflow_id=wid,
                    name=STEP_ORDER[position].value,
                    position=position,
                    status=status,
                    started_at=started,
                    finished_at=finished if status != "processing" else None,
                    output={},
                    **kw,
                )
            )
            return finished

        def completed_run(wid, i, created, project=None, scale=1.0):
            started = created + timedelta(seconds=1)
            clock = started
            for position, name in enumerate(STEP_ORDER):
                clock = step(wid, position, "completed", clock, STEP_SECONDS[name] * i * scale)
            run(
                wid,
                alice,
                "completed",
                created,
                project=project,
                started_at=started,
                finished_at=clock,
            )

        for i in range(1, 5):
            completed_run(f"w{i}", i, at(5, 9 + i), project=ads.id if i <= 2 else None)
        completed_run("w8", 1, at(1, 12), scale=100)

        s.flush()
        w5_start = at(6, 9, 0, 1)
        clock = step("w5", 0, "completed", w5_start, 0.4)
        clock = step(
            "w5", 1, "failed", clock, 3, error_category="content_policy", error_message="no"
        )
        for position in range(2, 6):
            step("w5", position, "skipped")
        run(
            "w5",
            bob,
            "failed",
            at(6, 9),
            cost=20,
            started_at=w5_start,
            finished_at=clock,
            error_category="content_policy",
            error_message="The image model refused the prompt",
        )
        for position in range(6):
            step("w6", position, "cancelled")
        run("w6", bob, "cancelled", at(6, 12), cost=20, finished_at=at(6, 12, 1))
        for position in range(6):
            step("w9", position, "skipped")
        run(
            "w9",
            bob,
            "failed",
            at(7, 8),
            cost=20,
            finished_at=at(7, 8, 10),
            error_category="stale",
            error_message="never picked up",
        )
        w7_start = at(7, 15, 0, 1)
        clock = step("w7", 0, "completed", w7_start, 0.3)
        step("w7", 1, "processing", clock)
        for position in range(2, 6):
            step("w7", position, "pending")
        run("w7", alice, "running", at(7, 15), started_at=w7_start)
        s.flush()  # runs before the calls and ledger rows that point at them

        def call(wid, provider, operation, start, ms, outcome="ok", attempt=1, **kw):
            s.add(
                ApiCall(
                    workflow_id=wid,
                    step=kw.pop("step", None),
                    provider=provider,
                    operation=operation,
                    attempt=attempt,
                    started_at=start,
                    duration_ms=ms,
                    outcome=outcome,
                    **kw,
                )
            )

        gen = {"step": "generate_image"}
        call("w1", "openai", "generate", at(5, 10, 0, 2), 1000, cost_usd=Decimal("0.04"), **gen)
        call("w2", "openai", "generate", at(5, 11, 0, 2), 3000, cost_usd=Decimal("0.04"), **gen)
        call(
            "w3",
            "openai",
            "generate",
            at(5, 12, 0, 2),
            500,
            outcome="transient",
            status_code=429,
            error_code="rate_limit_exceeded",
            **gen,
        )
        call("w3", "openai", "generate", at(5, 12, 0, 4), 2000, attempt=2, cost_usd=Decimal("0.04"))
        call(
            "w5",
            "openai",
            "generate",
            at(6, 9, 0, 2),
            800,
            outcome="permanent",
            status_code=400,
            error_code="content_policy_violation",
            **gen,
        )
        call("w1", "fal", "status", at(5, 10, 0, 5), 200)
        call("w2", "fal", "status", at(5, 11, 0, 5), 400)
        call("w1", "s3", "put", at(5, 10, 0, 9), 100)
        call("w8", "openai", "generate", at(1, 12, 0, 2), 99_999, cost_usd=Decimal("9"))

        # The ledger: grants on 1 Jan, a reserve when each run was created, refunds when the
        # failed and cancelled ones ended. Balances kept equal to the ledger sums.
        balances = {alice.id: 0, bob.id: 0}

        def move(user, kind, amount, when, wid=None):
            balances[user.id] += amount
            s.add(
                CreditTransaction(
                    user_id=user.id,
                    kind=kind,
                    amount=amount,
                    balance_after=balances[user.id],
                    workflow_id=wid,
                    actor="system",
                    reason=kind,
                    idempotency_key=f"{kind}:{wid}" if wid else None,
                    created_at=when,
                )
            )

        move(alice, "grant", 100, at(1, 9))
        move(bob, "grant", 100, at(1, 9))
        move(alice, "reserve", -10, at(1, 12), "w8")
        for i in range(1, 5):
            move(alice, "reserve", -10, at(5, 9 + i), f"w{i}")
        move(bob, "reserve", -20, at(6, 9), "w5")
        move(bob, "refund", 20, at(6, 9, 1), "w5")
        move(bob, "reserve", -20, at(6, 12), "w6")
        move(bob, "refund", 20, at(6, 12, 1), "w6")
        move(bob, "reserve", -20, at(7, 8), "w9")
        move(bob, "refund", 20, at(7, 8, 10), "w9")
        move(alice, "reserve", -10, at(7, 15), "w7")
        alice.balance, bob.balance = balances[alice.id], balances[bob.id]
        ids = {"alice": alice.id, "bob": bob.id, "ads": ads.id}
    return ids


def test_kpis_count_the_runs_created_in_the_range(db, history):
    with db.read() as s:
        k = monitoring.kpis(s, RANGE)
    assert (k.workflows, k.completed, k.failed, k.cancelled) == (8, 4, 2, 1)
    assert k.in_flight_now == 1
    assert k.success_rate == pytest.approx(4 / 7)
    assert k.failure_rate == pytest.approx(2 / 7)
    # Completed runs lasted 10, 20, 30, 40 s: h = 0.5 * 3 = 1.5 -> 20 + 0.5 * 10.
    assert k.p50_duration_s == 25.0
    # h = 0.95 * 3 = 2.85 -> 30 + 0.85 * 10.
    assert k.p95_duration_s == pytest.approx(38.5)
    # Reserved 4 x 10 + 3 x 20 + 10, refunded 3 x 20; the 1 Jan run and the grants are out.
    assert (k.credits_reserved, k.credits_refunded, k.credits_spent) == (110, 60, 50)


def test_kpis_narrowed_to_a_user_or_a_project(db, history):
    with db.read() as s:
        bob = monitoring.kpis(s, MonitoringFilter(RANGE.since, RANGE.until, user_id=history["bob"]))
        ads = monitoring.kpis(
            s, MonitoringFilter(RANGE.since, RANGE.until, project_id=history["ads"])
        )
    assert (bob.workflows, bob.completed, bob.failed, bob.cancelled) == (3, 0, 2, 1)
    assert bob.in_flight_now == 0
    assert bob.p50_duration_s is None
    assert (bob.credits_reserved, bob.credits_refunded) == (60, 60)
    assert (ads.workflows, ads.completed, ads.p50_duration_s, ads.p95_duration_s) == (
        2,
        2,
        15.0,
        19.5,
    )
    assert (ads.credits_reserved, ads.credits_refunded) == (20, 0)


def test_an_empty_range_has_zeros_and_no_rates(db, history):
    empty = MonitoringFilter(since=at(20), until=at(21))
    with db.read() as s:
        k = monitoring.kpis(s, empty)
    assert (k.workflows, k.success_rate, k.p50_duration_s, k.credits_spent) == (0, None, None, 0)


def test_outcomes_are_bucketed_by_day_with_every_day_present(db, history):
    with db.read() as s:
        buckets = monitoring.outcomes_over_time(s, RANGE)
    assert [(b.start, b.completed, b.failed, b.cancelled, b.in_flight) for b in buckets] == [
        (at(5), 4, 0, 0, 0),
        (at(6), 0, 1, 1, 0),
        (at(7), 0, 1, 0, 1),
    ]


def test_outcomes_of_a_short_range_are_bucketed_by_hour(db, history):
    flt = MonitoringFilter(since=at(5, 10, 30), until=at(5, 14))
    assert flt.granularity is Granularity.HOUR
    with db.read() as s:
        buckets = monitoring.outcomes_over_time(s, flt)
    # 10:00 is the bucket of 10:30; the 10:00 run was created before the range began.
    assert [(b.start.hour, b.completed) for b in buckets] == [(10, 0), (11, 1), (12, 1), (13, 1)]


def test_step_durations_and_their_histogram(db, history):
    with db.read() as s:
        durations = monitoring.step_durations(s, RANGE)
    by_step = {d.step: d for d in durations}
    assert [d.step for d in durations] == [n.value for n in STEP_ORDER]
    # validate: w1..w4 took 0.5, 1, 1.5, 2 s; w5 0.4 s; w7 0.3 s (w8 is out of range).
    v = by_step["validate"]
    assert v.count == 6
    assert v.p50_s == 0.75  # h = 2.5: 0.5 + 0.5 * (1 - 0.5)
    assert v.p95_s == pytest.approx(1.875)  # h = 4.75: 1.5 + 0.75 * 0.5
    assert v.mean_s == pytest.approx(5.7 / 6)
    assert v.max_s == 2.0
    # Bins [0, 0.5), [0.5, 1), [1, 2), [2, 5), ...: 0.3 0.4 | 0.5 | 1 1.5 | 2
    assert v.bins[:5] == (2, 1, 2, 1, 0)
    assert sum(v.bins) == 6
    video = by_step["generate_video"]
    assert (video.count, video.p50_s, video.max_s) == (4, 12.5, 20.0)
    assert video.p95_s == pytest.approx(19.25)
    # generate_image: only completed steps count (w5's failed one does not).
    assert by_step["generate_image"].count == 4
    rows = monitoring.histogram(durations)
    assert rows[0] == monitoring.HistogramBin("validate", 0.0, 0.5, 2)
    assert sum(r.count for r in rows if r.step == "validate") == 6
    assert all(r.count for r in rows)


def test_step_durations_for_one_project(db, history):
    flt = MonitoringFilter(RANGE.since, RANGE.until, project_id=history["ads"])
    with db.read() as s:
        video = {d.step: d for d in monitoring.step_durations(s, flt)}["generate_video"]
    assert (video.count, video.p50_s, video.p95_s) == (2, 7.5, pytest.approx(9.75))


def test_failure_reasons_by_step_and_category(db, history):
    with db.read() as s:
        reasons = monitoring.failure_reasons(s, RANGE)
    assert sorted(reasons, key=lambda r: r.category) == [
        monitoring.FailureReason(
            "generate_image", "content_policy", 1, "The image model refused the prompt"
        ),
        monitoring.FailureReason(None, "stale", 1, "never picked up"),
    ]


def test_error_codes_of_attempts_that_did_not_end_ok(db, history):
    with db.read() as s:
        codes = monitoring.error_codes(s, RANGE)
    assert sorted((c.outcome, c.error_code, c.status_code, c.count) for c in codes) == [
        ("permanent", "content_policy_violation", 400, 1),
        ("transient", "rate_limit_exceeded", 429, 1),
    ]
    assert {(c.step, c.provider, c.operation) for c in codes} == {
        ("generate_image", "openai", "generate")
    }


def test_provider_performance(db, history):
    with db.read() as s:
        stats = monitoring.provider_performance(s, RANGE)
    by_op = {(p.provider, p.operation): p for p in stats}
    assert list(by_op) == [("fal", "status"), ("openai", "generate"), ("s3", "put")]
    gen = by_op[("openai", "generate")]
    # Attempts 1000, 3000, 500 (transient), 2000 (its retry), 800 (permanent).
    assert (gen.calls, gen.first_attempts, gen.retries, gen.errors, gen.transient) == (
        5,
        4,
        1,
        2,
        1,
    )
    assert gen.p50_ms == 1000.0
    assert gen.p95_ms == pytest.approx(2800.0)  # h = 3.8: 2000 + 0.8 * 1000
    assert gen.cost_usd == pytest.approx(0.12)
    assert (gen.error_rate, gen.transient_rate, gen.retried_share) == (0.4, 0.2, 0.25)
    fal = by_op[("fal", "status")]
    assert (fal.calls, fal.p50_ms, fal.p95_ms, fal.error_rate) == (2, 300.0, 390.0, 0.0)
    totals = monitoring.provider_totals(stats)
    assert [(t.provider, t.calls, t.cost_usd) for t in totals] == [
        ("fal", 2, 0.0),
        ("openai", 5, 0.12),
        ("s3", 1, 0.0),
    ]


def test_provider_filter_and_user_filter_narrow_the_calls(db, history):
    with db.read() as s:
        only_fal = monitoring.provider_performance(
            s, MonitoringFilter(RANGE.since, RANGE.until, provider="fal")
        )
        bob = monitoring.provider_performance(
            s, MonitoringFilter(RANGE.since, RANGE.until, user_id=history["bob"])
        )
        bob_codes = monitoring.error_codes(
            s, MonitoringFilter(RANGE.since, RANGE.until, user_id=history["bob"])
        )
    assert [(p.provider, p.calls) for p in only_fal] == [("fal", 2)]
    assert [(p.operation, p.calls, p.p50_ms, p.errors) for p in bob] == [("generate", 1, 800.0, 1)]
    assert [c.error_code for c in bob_codes] == ["content_policy_violation"]


def test_credit_usage_by_user_and_by_project_from_the_ledger(db, history):
    alice, bob = history["alice"], history["bob"]
    with db.read() as s:
        users = monitoring.credit_usage(s, RANGE, by="user")
        projects = monitoring.credit_usage(s, RANGE, by="project")
    assert [(u.start.day, u.key, u.reserved, u.refunded, u.spent) for u in users] == [
        (5, alice, 40, 0, 40),
        (6, bob, 40, 40, 0),
        (7, alice, 10, 0, 10),
        (7, bob, 20, 20, 0),
    ]
    assert {u.label for u in users} == {"alice@example.com", "bob@example.com"}
    ads = history["ads"]
    assert sorted(
        ((p.start.day, p.label, p.reserved, p.refunded) for p in projects),
    ) == [
        (5, "(no project)", 20, 0),
        (5, "Ads", 20, 0),
        (6, "(no project)", 40, 40),
        (7, "(no project)", 30, 20),
    ]
    assert {p.key for p in projects} == {None, ads}


def test_credit_usage_by_week_starts_on_mondays(db, history):
    flt = MonitoringFilter(since=at(1), until=at(8))
    with db.read() as s:
        weeks = monitoring.credit_usage(s, flt, by="user", granularity=Granularity.WEEK)
    # 1 Jan 2026 is a Thursday: its week began Monday 29 December 2025.
    assert [(w.start, w.key, w.reserved) for w in weeks] == [
        (datetime(2025, 12, 29, tzinfo=UTC), history["alice"], 10),
        (at(5), history["alice"], 50),
        (at(5), history["bob"], 60),
    ]


def test_long_ranges_use_weekly_credit_usage():
    year = MonitoringFilter.last(timedelta(days=365), now=at(5))
    assert year.granularity is Granularity.DAY
    assert year.usage_granularity is Granularity.WEEK
    starts = monitoring.bucket_starts(year, Granularity.WEEK)
    assert all(start.weekday() == 0 for start in starts)
    assert starts[0] <= year.since < starts[0] + timedelta(weeks=1)


def test_filter_choices(db, history):
    with db.read() as s:
        choices = monitoring.filter_choices(s)
    assert [email for _, email in choices.users] == ["alice@example.com", "bob@example.com"]
    assert [name for _, name, _ in choices.projects] == ["Ads"]
    assert choices.providers == ["fal", "openai", "s3"]


def test_csv_export_has_a_header_and_the_derived_rates(db, history):
    with db.read() as s:
        text = monitoring.to_csv(monitoring.provider_performance(s, RANGE))
    header, *rows = text.strip().splitlines()
    assert header.startswith("provider,operation,calls,")
    assert "error_rate" in header and "retried_share" in header
    assert len(rows) == 3
    assert monitoring.to_csv([]) == ""


def test_a_filter_needs_an_aware_forward_range():
    with pytest.raises(RequestValidationError):
        MonitoringFilter(since=at(2), until=at(1))
    with pytest.raises(RequestValidationError):
        MonitoringFilter(since=datetime(2026, 1, 1), until=at(2))


@pytest.mark.parametrize("seed", [1, 2])
def test_percentiles_match_the_definition_on_random_data(db, seed):
    """Many groups, ties, odd and even sizes: both databases give the reference numbers
    exactly (the same float arithmetic as percentile_cont)."""
    rng = random.Random(seed)
    values: dict[tuple[str, str], list[int]] = {}
    with db.begin() as s:
        for provider in ("p1", "p2", "p3"):
            for operation in ("a", "b"):
                n = rng.randint(1, 60)
                durations = [rng.choice([rng.randint(1, 5000), 100, 100]) for _ in range(n)]
                values[(provider, operation)] = durations
                s.add_all(
                    ApiCall(
                        provider=provider,
                        operation=operation,
                        started_at=at(5, 10) + timedelta(seconds=i),
                        duration_ms=ms,
                        outcome="ok",
                    )
                    for i, ms in enumerate(durations)
                )
    with db.read() as s:
        stats = monitoring.provider_performance(s, RANGE)
    for p in stats:
        got = values[(p.provider, p.operation)]
        assert p.calls == len(got)
        assert p.p50_ms == reference_percentile(got, 0.5)
        assert p.p95_ms == reference_percentile(got, 0.95)


def test_durations_are_whole_milliseconds_rounded_half_away_from_zero(db, history):
    """The generated duration column: 0.0005 s to 1.001 s is 1000.5 ms, stored as 1001."""
    with db.begin() as s:
        s.add(
            WorkflowStep(
                workflow_id="w7",
                name="extra",
                position=9,
                status="completed",
                output={},
                started_at=at(7, 16, 0, 0.0005),
                finished_at=at(7, 16, 0, 1.001),
            )
        )
    with db.read() as s:
        extra = {d.step: d for d in monitoring.step_durations(s, RANGE)}
        row = s.query(WorkflowStep.duration_ms).filter(WorkflowStep.name == "extra").scalar()
    assert row == 1001
    assert "extra" not in extra  # only the pipeline's steps are reported


def every_panel(db) -> list:
    with db.read() as s:
        return [
            monitoring.kpis(s, RANGE),
            monitoring.outcomes_over_time(s, RANGE),
            monitoring.step_durations(s, RANGE),
            monitoring.failure_reasons(s, RANGE),
            monitoring.error_codes(s, RANGE),
            monitoring.provider_performance(s, RANGE),
            monitoring.credit_usage(s, RANGE, by="user"),
            monitoring.credit_usage(s, RANGE, by="project"),
            monitoring.filter_choices(s),
        ]


def test_sqlite_and_postgres_agree_on_every_panel(postgres_url, sqlite_template, tmp_path):
    """The same history in both databases gives equal results, to the last bit."""
    path = tmp_path / "agree.db"
    shutil.copy(sqlite_template, path)
    engine = create_engine(postgres_url)
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()
    results = []
    for url in (f"sqlite:///{path}", postgres_url):
        database = Database.from_url(url)
        try:
            build_history(database)
            results.append(every_panel(database))
        finally:
            database.dispose()
    sqlite, postgres = results
    assert sqlite == postgres
