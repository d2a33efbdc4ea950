"""The monitoring rollups of closed days: the figures they give with the raw rows are the raw
rows' own, on SQLite and Postgres; a day is rolled up only once closed; an admin's late refund
of a closed day's run shows on the next read."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from core import admin
from core.auth import Role, create_user
from core.models import RollupDay, Workflow
from core.tools import demo
from core.views import monitoring, rollup
from core.views.monitoring import MonitoringFilter
from tests.helpers import a_run
from tests.views.test_delivered_cost import RANGE, at, figures, history  # noqa: F401 (a fixture)

NOW = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)


def sums(db, flt: MonitoringFilter) -> tuple:
    """Every figure the rollups feed: outcomes per day, the cost of a delivered video four ways,
    credit usage by user and by project (daily and weekly), the credit totals, the step panel
    and the provider panel (all of it and one provider's)."""
    with db.read() as s:
        costs = monitoring.delivered_cost(s, flt)
        return (
            monitoring.outcomes_over_time(s, flt),
            monitoring.step_durations(s, flt),
            monitoring.provider_performance(s, flt),
            monitoring.provider_performance(s, replace(flt, provider="fal")),
            {by: [(c.key, figures(c)) for c in costs.by(by)] for by in monitoring.DELIVERED_BY},
            monitoring.credit_usage(s, flt, by="user"),
            monitoring.credit_usage(s, flt, by="project"),
            monitoring.credit_usage(s, flt, by="user", granularity=monitoring.Granularity.WEEK),
            monitoring.credit_totals(s, flt),
        )


def rolled_days(db, kind: str) -> set[datetime]:
    with db.read() as s:
        days = s.scalars(select(RollupDay.day).where(RollupDay.kind == kind))
        return {d.replace(tzinfo=UTC) if d.tzinfo is None else d for d in days}


def hold_a_run_open(db, user_id: int, created: datetime) -> None:
    """A run queued since `created`: no day from then on is closed, so everything after it is
    read raw."""
    with db.begin() as s:
        s.add(a_run("held-open", user_id, "queued", created))


def test_rollup_and_raw_rows_give_the_raw_figures_on_seeded_history(db):
    demo.seed_demo(db, workflows=300, days=20, now=NOW)
    ranges = [
        MonitoringFilter(since=NOW - timedelta(days=19, hours=5), until=NOW),
        MonitoringFilter(since=NOW - timedelta(days=12), until=NOW - timedelta(days=3, hours=7)),
    ]
    with db.read() as s:
        user_id = s.scalars(select(Workflow.user_id).limit(1)).one()
        project_id = s.scalars(
            select(Workflow.project_id).where(Workflow.project_id.is_not(None)).limit(1)
        ).one()
    ranges += [
        MonitoringFilter(since=ranges[0].since, until=NOW, user_id=user_id),
        MonitoringFilter(since=ranges[0].since, until=NOW, project_id=project_id),
    ]
    with_rollup = [sums(db, flt) for flt in ranges]
    for kind in ("runs", "ledger", "calls", "steps"):
        assert len(rolled_days(db, kind)) >= 17

    hold_a_run_open(db, user_id, NOW - timedelta(days=40))
    assert [sums(db, flt) for flt in ranges] == with_rollup


@pytest.mark.usefixtures("history")
def test_a_day_with_a_run_in_flight_is_not_rolled_up_nor_any_after_it(db):
    with db.read() as s:
        monitoring.delivered_cost(s, RANGE)
        monitoring.kpis(s, RANGE)
        assert rollup.horizon(s) == at(7)  # d7 has been running since 7 Jan 15:00
        monitoring.provider_performance(s, RANGE)
        monitoring.step_durations(s, RANGE)
    for kind in ("runs", "ledger", "calls", "steps"):
        assert rolled_days(db, kind) == {at(5), at(6)}


@pytest.mark.usefixtures("history")
def test_a_late_refund_of_a_closed_days_run_shows_on_the_next_read(db):
    before = sums(db, RANGE)
    assert at(5) in rolled_days(db, "runs")
    with db.begin() as s:
        boss = create_user(s, "boss@example.com", starting_credits=0, role=Role.ADMIN)
        assert admin.refund_run(s, boss, "d1", reason="the clip is unusable") == 19
    after = sums(db, RANGE)
    total = dict(after[4]["time"])[at(5)]
    assert total[3] == dict(before[4]["time"])[at(5)][3] - 19  # credits spent on 5 Jan
    assert after[5:] == before[5:]  # the refund row is written today, outside the range

    hold_a_run_open(db, boss.id, at(1))
    assert sums(db, RANGE) == after
