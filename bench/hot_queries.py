"""Hot queries: what the watch page and the API status read per poll of one run, and every query
the monitoring page runs, on a scratch Postgres database seeded in bulk by generate_series.

Seeding is two passes on one database: 100,000 runs over the last year (the monitoring panels are
timed at that size), then older runs up to 1,000,000 workflow_steps rows in all (the watch query
is timed at that size). Each run has six steps, twelve provider calls, six run events, its ledger
rows and, when it completed, its two files. VACUUM ANALYZE follows each pass, as autovacuum would
have done to a database of that age.

    python bench/hot_queries.py            # prints the figures; measure() returns them

The monitoring total is the sum of the one-year medians of every panel the page draws, each in
its own read transaction as the page makes them; its first call (which rolls up closed days
that are not yet rolled up) is reported apart.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import create_engine, select, text
from sqlalchemy.orm import Session

from core.auth import get_user
from core.db import Database, scratch_database, upgrade_schema
from core.models import Workflow
from core.schemas import parse_request
from core.views import monitoring
from core.views.monitoring import MonitoringFilter
from core.views.run import run_detail
from core.workflows import load_workflow

DEFAULT_BASE_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
MONITORING_RUNS = 100_000
WATCH_STEP_ROWS = 1_000_000
STEPS_PER_RUN = 6
USERS = 40
PROJECTS = 12
WATCH_POLLS = 400

Panel = Callable[[Session, MonitoringFilter], Any]
# Every query the monitoring page runs for one render (the histogram comes with step_durations).
PANELS: dict[str, Panel] = {
    "kpis": monitoring.kpis,
    "outcomes_over_time": monitoring.outcomes_over_time,
    "step_durations+histogram": monitoring.step_durations,
    "failure_reasons": monitoring.failure_reasons,
    "error_codes": monitoring.error_codes,
    "provider_performance": monitoring.provider_performance,
    "credit_usage(user)": lambda s, f: monitoring.credit_usage(s, f, by="user"),
    "credit_usage(project)": lambda s, f: monitoring.credit_usage(s, f, by="project"),
    "filter_choices": lambda s, f: monitoring.filter_choices(s),
    "reuse_stats": monitoring.reuse_stats,
    "delivered_cost": monitoring.delivered_cost,
}

# One statement per table, all keyed on the run number i in [:first, :last]. A run's fate comes
# from i: 86% completed, 8% failed at a step chosen by i, 6% cancelled; every 50th reused a still.
_RUNS = """
INSERT INTO workflows (id, user_id, project_id, client_key, status, image_prompt, video_prompt,
    request, cost_credits, video_model, image_credits, image_fingerprint, reuse_image_from,
    cancel_requested, recoveries, error_message, error_category, created_at, started_at,
    finished_at, last_event_seq)
SELECT md5('run' || i), 1 + i % :users, CASE WHEN i % 3 = 0 THEN NULL ELSE 1 + i % :projects END,
    md5('key' || i), fate, 'a lighthouse at dusk ' || i, 'slow push in', CAST(:request AS json),
    CASE WHEN i % 50 = 0 THEN 16 ELSE 19 END, CASE WHEN i % 4 = 0 THEN 'veo3.1' END, 3,
    md5('image' || i % 5000), CASE WHEN i % 50 = 0 THEN md5('run' || (i - 1)) END, false, 0,
    CASE WHEN fate = 'failed' THEN 'the provider refused the prompt' END,
    CASE WHEN fate = 'failed' THEN 'provider_permanent' END,
    created, created + interval '2 seconds', created + interval '1 second' * (40 + i % 300), 6
FROM (
    SELECT i, :newest - interval '1 day' * :days * (:last - i + random()) / (:last - :first + 1)
        AS created,
        CASE WHEN i % 100 < 86 THEN 'completed' WHEN i % 100 < 94 THEN 'failed'
            ELSE 'cancelled' END AS fate
    FROM generate_series(CAST(:first AS int), CAST(:last AS int)) AS i
) AS g
"""
# The batch's runs, by number.
_BATCH = (
    "generate_series(CAST(:first AS int), CAST(:last AS int)) AS i"
    " JOIN workflows w ON w.id = md5('run' || i)"
)
_STEPS = f"""
INSERT INTO workflow_steps (workflow_id, name, position, status, progress, message, attempts,
    output, started_at, finished_at, deadline_at)
SELECT w.id, (ARRAY['validate', 'generate_image', 'upload_image', 'generate_video',
        'upload_video', 'finalize'])[p + 1], p,
    CASE WHEN w.status = 'completed' OR p < cut THEN 'completed' WHEN p = cut THEN w.status
        ELSE 'skipped' END,
    CASE WHEN w.status = 'completed' OR p < cut THEN 100 ELSE 0 END, '', 1, CAST('{{}}' AS json),
    CASE WHEN w.status = 'completed' OR p <= cut THEN w.created_at + interval '1 minute' * p END,
    CASE WHEN w.status = 'completed' OR p <= cut THEN w.created_at + interval '1 minute' * p
        + interval '1 millisecond' * (200 + random() * random() * 10 * (ARRAY[900, 20000, 1500,
        90000, 4000, 600])[p + 1]) END,
    w.created_at + interval '1 hour'
FROM {_BATCH}
CROSS JOIN LATERAL (SELECT CASE WHEN w.status = 'completed' THEN 6
    ELSE abs(hashtext(w.id)) % 6 END AS cut) AS f
CROSS JOIN generate_series(0, 5) AS p
"""
_CALLS = f"""
INSERT INTO api_calls (workflow_id, step, provider, operation, attempt, started_at, duration_ms,
    outcome, status_code, error_code, cost_usd)
SELECT w.id, c.step, c.provider, c.operation,
    CASE WHEN c.n = 12 AND hashtext(w.id) % 10 = 0 THEN 2 ELSE 1 END,
    w.created_at + interval '10 seconds' * c.n, (c.base + random() * c.base)::int,
    CASE WHEN c.n = 3 AND hashtext(w.id) % 20 = 0 THEN 'transient'
        WHEN c.n = 11 AND w.status = 'failed' THEN 'permanent' ELSE 'ok' END,
    CASE WHEN c.n = 3 AND hashtext(w.id) % 20 = 0 THEN 503
        WHEN c.n = 11 AND w.status = 'failed' THEN 422 ELSE 200 END,
    CASE WHEN c.n = 11 AND w.status = 'failed' THEN 'content_policy' END,
    CASE WHEN c.n = 1 THEN 0.04 WHEN c.n = 11 AND w.status = 'completed'
        THEN CASE WHEN w.video_model IS NULL THEN 0.80 ELSE 3.20 END ELSE 0 END
FROM {_BATCH}
CROSS JOIN (VALUES (1, 'generate_image', 'openai', 'generate', 12000),
    (2, 'generate_video', 'fal', 'submit', 300), (11, 'generate_video', 'fal', 'result', 900),
    (12, 'upload_video', 'storage', 'put', 150)) AS c(n, step, provider, operation, base)
"""
# Eight status polls per run, as a video provider is asked while it works.
_POLLS = f"""
INSERT INTO api_calls (workflow_id, step, provider, operation, attempt, started_at, duration_ms,
    outcome, status_code, cost_usd)
SELECT w.id, 'generate_video', 'fal', 'status', 1, w.created_at + interval '10 seconds' * n,
    (80 + random() * 80)::int,
    CASE WHEN n = 3 AND hashtext(w.id) % 20 = 0 THEN 'transient' ELSE 'ok' END,
    CASE WHEN n = 3 AND hashtext(w.id) % 20 = 0 THEN 503 ELSE 200 END, 0
FROM {_BATCH} CROSS JOIN generate_series(3, 10) AS n
"""
_LEDGER = f"""
INSERT INTO credit_transactions (user_id, kind, amount, balance_after, workflow_id, actor, reason,
    idempotency_key, created_at)
SELECT w.user_id, m.kind, m.sign * CASE WHEN m.kind = 'release' THEN 3
        WHEN m.kind = 'reserve' AND w.reuse_image_from IS NOT NULL THEN w.cost_credits + 3
        ELSE w.cost_credits END, 0, w.id, 'system', m.kind,
    m.kind || ':' || w.id, w.created_at + interval '1 second' * m.delay
FROM {_BATCH}
CROSS JOIN (VALUES ('reserve', -1, 0), ('release', 1, 30), ('refund', 1, 400))
    AS m(kind, sign, delay)
WHERE m.kind = 'reserve' OR (m.kind = 'refund' AND w.status <> 'completed')
    OR (m.kind = 'release' AND w.reuse_image_from IS NOT NULL)
"""
_EVENTS = f"""
INSERT INTO run_events (workflow_id, seq, kind, payload, created_at)
SELECT w.id, s, 'step', CAST('{{}}' AS json), w.created_at + interval '1 minute' * s
FROM {_BATCH} CROSS JOIN generate_series(1, 6) AS s
"""
_ASSETS = f"""
INSERT INTO assets (workflow_id, user_id, kind, storage_backend, storage_key, content_type,
    size_bytes, sha256, created_at)
SELECT w.id, w.user_id, k.kind, 'local', w.id || '/' || k.kind, k.type, 1000000,
    md5(w.id) || md5(k.kind), w.finished_at
FROM {_BATCH}
CROSS JOIN (VALUES ('image', 'image/png'), ('video', 'video/mp4')) AS k(kind, type)
WHERE w.status = 'completed'
"""
SEED_STATEMENTS: dict[str, str] = {
    "workflows": _RUNS,
    "workflow_steps": _STEPS,
    "api_calls": _CALLS,
    "api_calls (polls)": _POLLS,
    "credit_transactions": _LEDGER,
    "run_events": _EVENTS,
    "assets": _ASSETS,
}


@dataclass(frozen=True)
class Seeded:
    runs: int
    seconds: float


def seed_users(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as c:
        c.execute(
            text(
                "INSERT INTO users (id, email, display_name, role, balance, is_active, created_at)"
                " SELECT i, 'user' || i || '@bench.example', '', CASE WHEN i = 1 THEN 'admin'"
                " ELSE 'user' END, 0, true, now() - interval '2 years'"
                " FROM generate_series(1, :users) AS i"
            ),
            {"users": USERS},
        )
        c.execute(
            text(
                "INSERT INTO projects (id, user_id, name, created_at) SELECT i, 1 + i % :users,"
                " 'project ' || i, now() - interval '2 years' FROM generate_series(1, :projects)"
                " AS i"
            ),
            {"users": USERS, "projects": PROJECTS},
        )
    engine.dispose()


def seed_runs(url: str, *, first: int, count: int, newest: datetime, days: float) -> Seeded:
    """Runs numbered first..first+count-1, created evenly over the `days` before `newest`, with
    all their rows; then VACUUM ANALYZE."""
    started = time.perf_counter()
    request = json.dumps(parse_request({"imagePrompt": "a", "videoPrompt": "b"}).to_json())
    params = {
        "first": first,
        "last": first + count - 1,
        "newest": newest,
        "days": days,
        "users": USERS,
        "projects": PROJECTS,
        "request": request,
    }
    engine = create_engine(url)
    try:
        with engine.begin() as c:
            for statement in SEED_STATEMENTS.values():
                c.execute(text(statement), params)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            c.execute(text("VACUUM ANALYZE"))
    finally:
        engine.dispose()
    return Seeded(runs=count, seconds=time.perf_counter() - started)


def seed_year(url: str, runs: int, now: datetime) -> Seeded:
    """Users, projects and `runs` runs over the year before `now` (the monitoring history)."""
    seed_users(url)
    return seed_runs(url, first=1, count=runs, newest=now, days=365)


# ---------------------------------------------------------------------------------------------
# Timing


def time_panel(db: Database, panel: Panel, flt: MonitoringFilter, repeat: int):
    """(first call s, median of `repeat` further calls s, rows returned): each call in its own
    read transaction, as the page makes them."""
    timings = []
    rows = None
    for _ in range(repeat + 1):
        with db.read() as session:
            started = time.perf_counter()
            result = panel(session, flt)
            timings.append(time.perf_counter() - started)
        rows = len(result) if isinstance(result, list) else 1
    return timings[0], statistics.median(timings[1:]), rows


def time_monitoring(
    db: Database, flt: MonitoringFilter, repeat: int
) -> dict[str, tuple[float, float, int]]:
    return {name: time_panel(db, panel, flt, repeat) for name, panel in PANELS.items()}


def _p95(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=20, method="inclusive")[18]


def time_watch(db: Database, polls: int) -> dict[str, float]:
    """p95 ms of what one poll reads for a random run: the watch page's (the run and its steps)
    and the API status's (run_detail and the event seq), each in its own read transaction."""
    with db.read() as session:
        ids = session.scalars(select(Workflow.id).order_by(Workflow.id).limit(polls * 50)).all()[
            ::50
        ]
        viewer = get_user(session, 1)  # the admin: sees every run
    page: list[float] = []
    api: list[float] = []
    for workflow_id in ids:
        with db.read() as session:
            started = time.perf_counter()
            load_workflow(session, workflow_id)
            page.append((time.perf_counter() - started) * 1000)
        with db.read() as session:
            started = time.perf_counter()
            session.scalar(select(Workflow.last_event_seq).where(Workflow.id == workflow_id))
            run_detail(session, workflow_id, viewer, max_active_per_user=4)
            api.append((time.perf_counter() - started) * 1000)
    return {"watch_p95_ms": _p95(page), "api_status_p95_ms": _p95(api)}


def measure(server_url: str, *, repeat: int = 3) -> dict[str, float]:
    """Seed a scratch database on `server_url`'s server and time the hot queries; the figures:
    watch_p95_ms, api_status_p95_ms, monitoring_total_s (one-year medians summed),
    monitoring_first_s (the first render, which fills the rollup), monitoring_<panel>_ms, and
    the seeding seconds, and the load averages around it all (this machine's other work slows
    every query)."""
    figures: dict[str, float] = {"load_average_before": os.getloadavg()[0]}
    with scratch_database(server_url, prefix="reelforge_hot") as url:
        upgrade_schema(url)
        now = datetime.now(UTC)
        year = seed_year(url, MONITORING_RUNS, now)
        figures["seed_monitoring_s"] = year.seconds
        db = Database.from_url(url)
        try:
            flt = MonitoringFilter(since=now - timedelta(days=365), until=now)
            panels = time_monitoring(db, flt, repeat)
            figures["monitoring_first_s"] = sum(p[0] for p in panels.values())
            figures["monitoring_total_s"] = sum(p[1] for p in panels.values())
            for name, (_, median, _) in panels.items():
                figures[f"monitoring_{name}_ms"] = median * 1000
            older = WATCH_STEP_ROWS // STEPS_PER_RUN - MONITORING_RUNS
            more = seed_runs(
                url,
                first=MONITORING_RUNS + 1,
                count=older,
                newest=now - timedelta(days=365),
                days=365,
            )
            figures["seed_watch_s"] = more.seconds
            figures.update(time_watch(db, WATCH_POLLS))
        finally:
            db.dispose()
    figures["load_average_after"] = os.getloadavg()[0]  # other work slows every query
    return figures


def server_url() -> str:
    return (
        os.environ.get("BENCH_DATABASE_URL")
        or os.environ.get("TEST_DATABASE_URL")
        or DEFAULT_BASE_URL
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3, help="timed renders per panel")
    args = parser.parse_args()
    for name, value in measure(server_url(), repeat=args.repeat).items():
        print(f"{name}: {value:.3f}")


if __name__ == "__main__":
    main()
