"""Monitoring queries at a year of history: seeds a scratch Postgres database as
bench/hot_queries.py does (100,000 runs by default), then times every monitoring panel for a
one-year and a 7-day range, in a table.

The scratch database is created on BENCH_DATABASE_URL's (or TEST_DATABASE_URL's) server and
dropped at the end. After seeding it is VACUUMed and ANALYZEd, as autovacuum would have done to
a year-old database: index-only scans need the visibility map that VACUUM sets. The first call
of each panel fills the rollups of closed days (core.views.rollup); the medians read them.

    make bench-monitoring            # or: python bench/monitoring.py --workflows 20000

The last line is `monitoring total: <seconds> s`, the sum of the one-year medians.
"""

from __future__ import annotations

import argparse
import os
from datetime import UTC, datetime, timedelta

from hot_queries import MONITORING_RUNS, PANELS, seed_year, server_url, time_panel
from rich.console import Console
from rich.table import Table

from core.db import Database, scratch_database, upgrade_schema
from core.views.monitoring import MonitoringFilter

TARGET_S = 0.5
console = Console(width=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workflows", type=int, default=MONITORING_RUNS)
    parser.add_argument("--repeat", type=int, default=5, help="timed calls per panel and range")
    args = parser.parse_args()

    with scratch_database(server_url(), prefix="reelforge_bench") as url:
        upgrade_schema(url)
        now = datetime.now(UTC)
        result = seed_year(url, args.workflows, now)
        console.print(f"seeded {result.runs:,} runs with their rows in {result.seconds:.1f} s")
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
        title=f"Monitoring queries, {result.runs:,} runs over a year "
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
        f"{verdict} the {TARGET_S} s target; load average {load_before:.2f} -> "
        f"{load_after:.2f} on {os.cpu_count()} CPUs (other work on this machine slows every query)"
    )
    print(f"monitoring total: {totals['1 year']:.3f} s")


if __name__ == "__main__":
    main()
