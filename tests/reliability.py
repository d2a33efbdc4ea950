"""The README's reliability table, printed from the figures the tests measured.

Each test behind a row asserts its figures and then calls `record(row, **figures)`, which keeps
them in `.reliability/<row>.json` (git-ignored). `make reliability-report` prints the table
from those files, so the README's table is what was measured, never typed in by hand. A row whose
test has not run says so instead of showing a number.

    python -m tests.reliability
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.states import STEP_ORDER

DIRECTORY = Path(__file__).resolve().parents[1] / ".reliability"


def record(row: str, database_url: str, **figures: Any) -> None:
    """Keep a test's measured figures for the report (call it after the assertions passed).

    Figures of one row may come from several tests: they are merged. A test that runs on both
    databases keeps the Postgres figures when Postgres is configured (as in CI)."""
    assert row in ROWS, row
    database = database_url.split(":", 1)[0].split("+", 1)[0]
    if database == "sqlite" and os.environ.get("TEST_DATABASE_URL"):
        return
    DIRECTORY.mkdir(exist_ok=True)
    path = DIRECTORY / f"{row}.json"
    kept = json.loads(path.read_text()) if path.exists() else {}
    kept.update(figures, database=database)
    path.write_text(json.dumps(kept, indent=1, sort_keys=True))


def _crash(f: dict) -> str:
    steps = ", ".join(f"{step} {f['kills_by_step'][step]}" for step in STEP_ORDER)
    return (
        f"{f['kills']} kills, each aimed at a step and taken while it was processing ({steps}); "
        f"{f['runs']} runs: {f['completed']} completed, {f['cancelled']} cancelled by a user "
        f"mid-chaos, {f['failed']} failed, each run not completed refunded exactly once; "
        f"{f['generated_again']} images or videos generated again after their step completed; "
        "balances equal the ledger"
    )


def _load(f: dict) -> str:
    return (
        f"{f['runs']} concurrent runs in the suite: {f['completed']} completed, {f['failed']} "
        f"failed on permanent faults and refunded once each, {f['retried_calls']} calls retried, "
        "no invariant broken (200 runs: `make load`, see below)"
    )


def _credits(f: dict) -> str:
    return (
        f"{f['starts']} concurrent starts on a balance for {f['affordable']}: exactly "
        f"{f['started']} start; {f['grants']} grants racing {f['refund_calls']} refund calls "
        f"({f['refunded_runs']} runs, each refund asked twice): no update lost, each refund once"
    )


def _db_faults(f: dict) -> str:
    return (
        f"every backend connection killed {f['cuts']} times while runs were mid-step "
        f"({f['connections_killed']} connections), then {f['outage_s']:g} s with no connections "
        f"allowed: {f['completed']} of {f['runs']} runs completed ({f['interruptions']} "
        f"interruptions left to recovery, {f['taken_over']} take-overs of a running run by "
        "recovery, every run resumed)"
    )


def _process_exit(f: dict) -> str:
    return (
        f"exits {f['exit_s']:.1f} s after its last line ran with a run mid-video (asserted under "
        f"{f['bound_s']:g} s; "
        "the stuck video would hold it for its whole budget), its run released to recovery"
    )


ROWS: dict[str, tuple[str, Callable[[dict], str], str]] = {
    "crash": (
        "SIGKILL of the engine's process mid-run, then restart and recovery",
        _crash,
        "`tests/test_crash_recovery.py`",
    ),
    "load": (
        "load under injected faults (20% transient, 2% permanent per call)",
        _load,
        "`tests/test_load.py`",
    ),
    "credits": ("credit races", _credits, "`tests/test_credits.py`"),
    "db_faults": (
        "the database failing under running work",
        _db_faults,
        "`tests/test_db_faults.py`",
    ),
    "process_exit": ("a process stopped mid-run", _process_exit, "`tests/test_process_exit.py`"),
}


def _figure(row: str) -> str:
    _, describe, where = ROWS[row]
    path = DIRECTORY / f"{row}.json"
    if not path.exists():
        return f"not measured yet: run {where.strip('`')}"
    figures = json.loads(path.read_text())
    try:
        return f"{describe(figures)} (on {figures['database']})"
    except KeyError as missing:
        return f"not measured yet: {missing} missing, run {where.strip('`')}"


def table() -> str:
    lines = ["| what is tried | figure | where |", "|---|---|---|"]
    for row, (what, _, where) in ROWS.items():
        lines.append(f"| {what} | {_figure(row)} | {where} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
