"""Monitoring queries at a year of history: seeds a scratch Postgres database with demo history
(100,000 runs by default), then times every monitoring panel for a one-year and a 7-day range.

The scratch database is created on BENCH_DATABASE_URL's (or TEST_DATABASE_URL's) server and
dropped at the end. After seeding it is VACUUMed and ANALYZEd, as autovacuum would have done to
a year-old database: index-only scans need the visibility map that VACUUM sets.

    make bench-monitoring            # or: python bench/monitoring.py --workflows 20000

The last line is `monitoring total: <seconds> s`, the sum of the one-year medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import text
from sqlalchemy.orm import Session

from core.db import Database, scratch_database, upgrade_schema
from core.tools import demo
from core.views import monitoring
from core.views.monitoring import MonitoringFilter

DEFAULT_BASE_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
TARGET_S = 1.0
console = Console(width=110)

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


def seed(url: str, workflows: int, now: datetime) -> demo.SeedResult:
    db = Database.from_url(url)
    try:
        with console.status(f"seeding {workflows:,} workflows…"):
            result = demo.seed_demo(db, workflows=workflows, days=365, now=now)
        with console.status("VACUUM ANALYZE…"):
            with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
                c.execute(text("VACUUM ANALYZE"))
    finally:
        db.dispose()
    return result


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workflows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5, help="timed calls per panel and range")
    args = parser.parse_args()

    base = (
        os.environ.get("BENCH_DATABASE_URL")
        or os.environ.get("TEST_DATABASE_URL")
        or DEFAULT_BASE_URL
    )
    with scratch_database(base, prefix="reelforge_bench") as url:
        upgrade_schema(url)
        now = datetime.now(UTC)
        result = seed(url, args.workflows, now)
        console.print(
            f"seeded {result.workflows:,} workflows, {result.steps:,} steps, "
            f"{result.api_calls:,} api calls, {result.ledger_rows:,} ledger rows "
            f"in {result.seconds:.1f} s"
        )
        ranges = {
            "1 year": MonitoringFilter(since=now - timedelta(days=365), until=now),
            "7 days": MonitoringFilter(since=now - timedelta(days=7), until=now),
        }
        db = Database.from_url(url)
        load_before = os.getloadavg()[0]
        measured: dict[str, dict[str, tuple[float, float, int]]] = {}
        try:
            for label, flt in ranges.items():
                measured[label] = {
                    name: time_panel(db, panel, flt, args.repeat) for name, panel in PANELS.items()
                }
        finally:
            db.dispose()
        load_after = os.getloadavg()[0]

    table = Table(
        title=f"Monitoring queries, {result.workflows:,} runs over a year "
        f"(median of {args.repeat}, each in its own read transaction)"
    )
    table.add_column("panel")
    for label in ranges:
        table.add_column(f"{label}", justify="right")
        table.add_column("rows", justify="right")
    table.add_column("1 year, first call", justify="right")
    for name in PANELS:
        cells = []
        for label in ranges:
            _, median, rows = measured[label][name]
            cells += [f"{median * 1000:.1f} ms", f"{rows:,}"]
        table.add_row(name, *cells, f"{measured['1 year'][name][0] * 1000:.1f} ms")
    totals = {label: sum(m[1] for m in measured[label].values()) for label in ranges}
    first_pass = sum(m[0] for m in measured["1 year"].values())
    table.add_section()
    table.add_row(
        "total",
        f"{totals['1 year'] * 1000:.0f} ms",
        "",
        f"{totals['7 days'] * 1000:.0f} ms",
        "",
        f"{first_pass * 1000:.0f} ms",
    )
    console.print(table)
    verdict = "[green]within[/]" if totals["1 year"] < TARGET_S else "[red]over[/]"
    console.print(
        f"{verdict} the {TARGET_S:.0f} s target; load average {load_before:.2f} -> "
        f"{load_after:.2f} on {os.cpu_count()} CPUs (other work on this machine slows every query)"
    )
    print(f"monitoring total: {totals['1 year']:.3f} s")


if __name__ == "__main__":
    main()
