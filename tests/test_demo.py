"""`seed-demo`: realistic history written in bulk that keeps the ledger invariant."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from core import credits, workflows
from core.errors import RequestValidationError
from core.models import ApiCall, CreditTransaction, User, Workflow, WorkflowStep
from core.states import STEP_ORDER
from core.tools import demo
from core.views import monitoring

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
RUNS = 1_000


@pytest.fixture
def seeded(db) -> demo.SeedResult:
    return demo.seed_demo(db, workflows=RUNS, days=90, seed=7, now=NOW)


def test_seeded_history_keeps_every_balance_equal_to_its_ledger(db, seeded):
    with db.read() as session:
        assert credits.balance_mismatches(session) == []
        negative = session.execute(select(func.count()).where(User.balance < 0)).scalar()
        below_zero = session.execute(
            select(func.count()).where(CreditTransaction.balance_after < 0)
        ).scalar()
    assert negative == below_zero == 0


def test_seeded_history_has_the_advertised_mix(db, seeded):
    assert seeded.workflows == RUNS
    assert seeded.steps == RUNS * len(STEP_ORDER)
    assert 30 <= seeded.users <= 40 and seeded.projects >= seeded.users
    share = {status: n / RUNS for status, n in seeded.statuses.items()}
    assert set(share) == {"completed", "failed", "cancelled"}  # history only: nothing in flight
    assert share["completed"] == pytest.approx(0.85, abs=0.04)
    assert share["failed"] == pytest.approx(0.10, abs=0.03)
    assert share["cancelled"] == pytest.approx(0.05, abs=0.02)
    with db.read() as session:
        providers = set(session.execute(select(ApiCall.provider).distinct()).scalars())
        attempts = Counter(session.execute(select(ApiCall.attempt)).scalars())
        categories = set(
            session.execute(
                select(Workflow.error_category).where(Workflow.status == "failed")
            ).scalars()
        )
        kinds = Counter(session.execute(select(CreditTransaction.kind)).scalars())
        cost = session.execute(select(func.sum(ApiCall.cost_usd))).scalar()
    assert providers == {"openai", "fal", "s3"}
    retried = attempts[2] / attempts[1]
    assert 0.005 < retried < 0.10  # a few % of calls retried
    assert len(categories) >= 5 and None not in categories
    assert kinds["reserve"] == RUNS
    assert kinds["refund"] == seeded.statuses["failed"] + seeded.statuses["cancelled"]
    assert kinds["grant"] >= seeded.users
    assert 8 <= seeded.api_calls / RUNS <= 14
    assert cost > 0


def test_seeded_runs_read_back_like_real_ones(db, seeded):
    with db.read() as session:
        ids = session.execute(select(Workflow.id, Workflow.status).limit(200)).all()
        views = [workflows.load_workflow(session, wid) for wid, _ in ids]
        late = session.execute(select(func.max(Workflow.finished_at))).scalar()
        early = session.execute(select(func.min(Workflow.created_at))).scalar()
        negative = session.execute(
            select(func.count()).where(WorkflowStep.duration_ms < 0)
        ).scalar()
    assert late < NOW and early >= NOW - timedelta(days=90, minutes=31)
    assert negative == 0
    for view in views:
        assert view.status.is_terminal
        assert [s.name for s in view.steps] == list(STEP_ORDER)
        if view.status.value == "completed":
            assert all(s.status.value == "completed" for s in view.steps)
            assert 20 < view.duration_s < 2_000
        if view.status.value == "failed":
            assert view.error_message and view.error_category


def test_seeded_history_feeds_the_monitoring_page(db, seeded):
    flt = monitoring.MonitoringFilter(since=NOW - timedelta(days=91), until=NOW)
    with db.read() as session:
        kpis = monitoring.kpis(session, flt)
        steps = monitoring.step_durations(session, flt)
        stats = monitoring.provider_performance(session, flt)
    assert kpis.workflows == RUNS
    assert kpis.in_flight_now == 0
    assert 30 < kpis.p50_duration_s < kpis.p95_duration_s < 600
    assert kpis.credits_spent > 0
    video = {s.step: s for s in steps}["generate_video"]
    assert video.p50_s > {s.step: s for s in steps}["validate"].p95_s
    assert {s.provider for s in stats} == {"openai", "fal", "s3"}


def test_the_same_seed_twice_is_refused(db, seeded):
    with pytest.raises(RequestValidationError) as refused:
        demo.seed_demo(db, workflows=10, seed=7, now=NOW)
    assert "seed" in refused.value.problems
    again = demo.seed_demo(db, workflows=10, seed=8, now=NOW)
    assert again.workflows == 10
    with db.read() as session:
        assert credits.balance_mismatches(session) == []


def test_a_seed_makes_the_same_history_every_time():
    def history(seed: int):
        rng = random.Random(seed)
        start = NOW - timedelta(days=60)
        users = [demo._DemoUser(i, f"u{i}@x.test", start, [i]) for i in range(1, 37)]
        generator = demo._Generator(rng, users, credits.DEFAULT_CREDIT_COSTS, seed)
        chunk = generator.chunk(demo._arrival_times(rng, 50, NOW, 30))
        return chunk.workflows, chunk.steps, chunk.calls, chunk.ledger

    assert history(1) == history(1)
    assert history(1) != history(2)


def test_seed_demo_from_the_command_line(database_url, tmp_path):
    env = {**os.environ, "DATABASE_URL": database_url, "DATA_DIR": str(tmp_path), "COLUMNS": "200"}
    done = subprocess.run(
        [sys.executable, "-m", "core", "seed-demo", "--workflows", "120", "--days", "30"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "seeded 120 workflows" in done.stdout
    refused = subprocess.run(
        [sys.executable, "-m", "core", "seed-demo", "--workflows", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2
    assert "workflows" in refused.stderr
