"""The monitoring page: admins only; renders with nothing to show and with a small seeded
history; its filters narrow every panel and each panel downloads what it shows as CSV."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

import pytest
import streamlit as st
from sqlalchemy.exc import OperationalError
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.testing.v1 import AppTest

from core import auth
from core.accounts import LoginThrottle
from core.auth import Role
from core.config import Settings
from core.runtime import Runtime
from core.tools import demo
from core.ui import charts, nav
from core.ui import runtime as ui_runtime
from core.ui import session as ui_session
from core.ui.runtime import AppServices
from core.views import monitoring
from core.views.monitoring import MonitoringFilter
from tests.ui.conftest import ROOT, app_for, texts

SEED_RUNS = 40


@pytest.fixture(scope="module")
def seeded(engine) -> demo.SeedResult:
    """A few days of demo history (a seed no other test uses: demo users are per seed)."""
    return demo.seed_demo(engine.runtime.db, workflows=SEED_RUNS, days=3, seed=90417)


@pytest.fixture(autouse=True)
def fresh_panels():
    """The page caches its panels for a few seconds; each test starts from the database."""
    st.cache_data.clear()


@pytest.fixture
def downloads(monkeypatch) -> dict[str, bytes]:
    """What each download button would serve, by file name."""
    served: dict[str, bytes] = {}
    original = MemoryMediaFileStorage.load_and_get_id

    def spy(self, path_or_data, mimetype, kind, filename=None):
        if filename and isinstance(path_or_data, bytes):
            served[filename] = path_or_data
        return original(self, path_or_data, mimetype, kind, filename)

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", spy)
    return served


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric if m.label != "Credit balance"}


def rows(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"))))


def test_a_non_admin_is_refused_by_the_page_itself(engine, make_user):
    user = make_user()
    assert nav.MONITORING not in nav.pages_for(user.is_admin)
    at = AppTest.from_file(str(ROOT / nav.MONITORING.path), default_timeout=30)
    at.session_state["auth_user_id"] = user.id
    at.run()
    assert not at.exception
    assert "This page is for administrators." in texts(at)
    assert not at.metric and not at.download_button


@pytest.fixture
def empty_app(tmp_path, monkeypatch):
    """The page file against its own freshly migrated database: one admin, nothing else."""
    empty = Runtime(
        Settings(
            _env_file=None,
            data_dir=tmp_path / "data",
            database_url=f"sqlite:///{tmp_path / 'empty.db'}",
            offline_latency_s=0,
        )
    )
    with empty.db.begin() as session:
        only = auth.create_user(
            session, "only-admin@example.com", password="password-123", role=Role.ADMIN
        )
    fake = AppServices(runtime=empty, throttle=LoginThrottle(), bootstrap=None)
    monkeypatch.setattr(ui_session, "get_services", lambda: fake)
    monkeypatch.setattr(ui_runtime, "get_runtime", lambda: empty)
    at = AppTest.from_file(str(ROOT / nav.MONITORING.path), default_timeout=30)
    at.session_state["auth_user_id"] = only.id
    yield at
    empty.shutdown()


def test_on_an_empty_database_the_page_renders_zeros_and_empty_panels(engine, empty_app):
    at = empty_app.run()
    assert not at.exception
    assert metrics(at)["Workflows"] == "0"
    assert "No runs were created in this range." in texts(at)
    assert not at.get("plotly_chart")
    assert at.selectbox(key="monitoring_user").options == ["only-admin@example.com"]
    assert at.selectbox(key="monitoring_provider").options == []
    at.selectbox(key="monitoring_range").set_value("365d").run()
    assert not at.exception


def test_the_chart_builders_accept_empty_panels():
    for figure in (
        charts.outcomes_figure([], MonitoringFilter.last(timedelta(days=7))),
        charts.step_percentiles_figure([]),
        charts.histogram_figure([]),
        charts.provider_latency_figure([]),
        charts.provider_totals_figure([]),
        charts.credit_usage_figure([], MonitoringFilter.last(timedelta(days=7))),
        charts.delivered_cost_figure([], MonitoringFilter.last(timedelta(days=7))),
    ):
        assert figure.to_dict()["layout"]


def test_with_nothing_in_range_every_panel_says_so_without_an_error(engine, make_user):
    admin, idle = make_user(role=Role.ADMIN), make_user(credits=0)
    at = app_for(admin, page=nav.MONITORING.path)
    assert not at.exception
    at.selectbox(key="monitoring_user").set_value(idle.id).run()
    assert not at.exception
    shown = metrics(at)
    assert shown["Workflows"] == "0"
    assert shown["Success rate"] == "–"
    assert shown["Median duration"] == "–"
    assert shown["In flight now"] == "0"
    page = texts(at)
    for empty in (
        "No runs were created in this range.",
        "No step completed in this range.",
        "No run failed in this range.",
        "No provider calls in this range.",
        "No credits were spent in this range.",
    ):
        assert empty in page
    assert not at.get("plotly_chart")


def test_a_seeded_history_fills_every_panel(engine, make_user, seeded, downloads):
    at = app_for(make_user(role=Role.ADMIN), page=nav.MONITORING.path)
    assert not at.exception
    assert int(metrics(at)["Workflows"].replace(",", "")) >= SEED_RUNS
    charts = {chart.proto.id for chart in at.get("plotly_chart")}
    # outcomes, step p50/p95, histogram, latency, providers, usage, cost per delivered video
    assert len(charts) == 7
    assert {d.key for d in at.download_button} >= {
        "monitoring_csv_kpis",
        "monitoring_csv_outcomes",
        "monitoring_csv_step_durations",
        "monitoring_csv_failure_reasons",
        "monitoring_csv_provider_performance",
        "monitoring_csv_provider_totals",
        "monitoring_csv_credit_usage_user",
    }
    outcomes = rows(downloads["reelforge-outcomes.csv"])
    assert len(outcomes) in (7, 8)  # daily buckets over 7 days
    assert sum(int(r["total"]) for r in outcomes) >= SEED_RUNS
    kpis = rows(downloads["reelforge-kpis.csv"])
    assert kpis[0]["workflows"] == metrics(at)["Workflows"].replace(",", "")
    assert "credits_spent" in kpis[0]

    at.toggle(key="monitoring_auto_refresh").set_value(True).run()
    assert not at.exception
    at.segmented_control(key="monitoring_usage_by").set_value("project").run()
    assert not at.exception
    assert "reelforge-credit_usage_project.csv" in downloads

    (delivered,) = rows(downloads["reelforge-delivered_cost.csv"])
    assert metrics(at)["Videos delivered"] == (
        f"{int(delivered['delivered']):,} of {int(delivered['runs']):,}"
    )
    assert int(delivered["delivered"]) > 0 and float(delivered["list_usd"]) >= 0
    by_model = rows(downloads["reelforge-delivered_cost_model.csv"])
    assert sum(int(r["runs"]) for r in by_model) == int(delivered["runs"])
    at.segmented_control(key="monitoring_delivered_by").set_value("user").run()
    assert not at.exception
    by_user = rows(downloads["reelforge-delivered_cost_user.csv"])
    assert sum(int(r["delivered"]) for r in by_user) == int(delivered["delivered"])


def test_the_user_and_provider_filters_narrow_the_panels(engine, make_user, seeded, downloads):
    at = app_for(make_user(role=Role.ADMIN), page=nav.MONITORING.path)
    options = at.selectbox(key="monitoring_user").options
    assert options  # emails of every account
    with engine.runtime.db.read() as session:
        choices = monitoring.filter_choices(session)
        flt = MonitoringFilter.last(timedelta(days=7), now=datetime.now(UTC) + timedelta(minutes=1))
        busiest = max(
            (uid for uid, email in choices.users if email.endswith("@demo-90417.reelforge.local")),
            key=lambda uid: monitoring.kpis(session, _for_user(flt, uid)).workflows,
        )
        expected = monitoring.kpis(session, _for_user(flt, busiest)).workflows
    at.selectbox(key="monitoring_user").set_value(busiest).run()
    assert not at.exception
    assert metrics(at)["Workflows"] == f"{expected:,}"
    usage = rows(downloads["reelforge-credit_usage_user.csv"])
    assert {r["key"] for r in usage} == {str(busiest)}

    at.selectbox(key="monitoring_user").set_value(None)
    at.selectbox(key="monitoring_provider").set_value("fal").run()
    assert not at.exception
    tables = [d.value for d in at.dataframe if "operation" in d.value.columns]
    assert tables and all(set(t["provider"]) == {"fal"} for t in tables)
    performance = rows(downloads["reelforge-provider_performance.csv"])
    assert {r["provider"] for r in performance} == {"fal"}


def _for_user(flt: MonitoringFilter, user_id: int) -> MonitoringFilter:
    return MonitoringFilter(since=flt.since, until=flt.until, user_id=user_id)


def test_a_database_error_becomes_a_banner_not_a_traceback(engine, make_user, monkeypatch):
    def down(*_args, **_kwargs):
        raise OperationalError("SELECT 1", {}, Exception("database is locked"))

    at = app_for(make_user(role=Role.ADMIN), page=nav.MONITORING.path)
    monkeypatch.setattr(monitoring, "kpis", down)
    st.cache_data.clear()  # else the page shows the panels it read a moment ago
    at.run()
    assert not at.exception
    assert "The database is not answering right now." in texts(at)


def test_one_day_of_usage_is_one_day_wide_on_an_axis_spanning_the_range():
    flt = MonitoringFilter.last(timedelta(days=7), now=datetime(2026, 11, 30, 12, tzinfo=UTC))
    day = datetime(2026, 11, 29, tzinfo=UTC)
    usage = [
        monitoring.CreditUsage(start=day, key=1, label="a@example.com", reserved=19, refunded=0)
    ]
    layout = charts.credit_usage_figure(usage, flt).to_dict()
    (bar,) = layout["data"]
    day_ms = 24 * 3600 * 1000
    assert bar["width"] == pytest.approx(day_ms * 0.8)  # a bucket, not the whole chart
    assert layout["layout"]["xaxis"]["tickformat"] == "%b %d"  # dates, not 23:59:59.9996
    first, last = (datetime.fromisoformat(str(x)) for x in layout["layout"]["xaxis"]["range"])
    assert first <= flt.since and last >= flt.until


def test_legends_sit_outside_the_plot_area_so_they_cover_no_data():
    flt = MonitoringFilter.last(timedelta(days=1))
    durations = [monitoring.StepDuration("validate", 3, 1.0, 2.0, 1.5, 2.5)]
    for figure in (
        charts.outcomes_figure([], flt),
        charts.step_percentiles_figure(durations),
        charts.credit_usage_figure([], flt),
    ):
        legend = figure.to_dict()["layout"]["legend"]
        assert legend["yanchor"] == "bottom" and legend["y"] >= 1
