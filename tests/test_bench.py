"""`make bench`'s harness at its smallest: it runs on a scratch Postgres database, writes its
results file and ends with the two lines the issue fixes; a missing service is one line."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAST_LINES = (
    r"engine overhead: (\d+\.\d|n/a) ms median "
    r"\(celery chain (\d+\.\d|n/a) ms, prefect (\d+\.\d|n/a) ms, same run\)",
    r"overhead ratio prefect/reelforge: (\d+\.\d|n/a)",
)


def bench(*args: str, database_url: str, **env_vars: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "BENCH_DATABASE_URL": database_url, "COLUMNS": "200", **env_vars}
    return subprocess.run(
        [sys.executable, "bench/engine.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_tiny_overhead_run_writes_results_and_ends_with_the_two_lines(postgres_url, tmp_path):
    results = tmp_path / "results.md"
    done = bench(
        "--sections",
        "overhead",
        "--levels",
        "1,2",
        "--runs",
        "1",
        "--calibration-runs",
        "0",
        "--results",
        str(results),
        database_url=postgres_url,
    )

    assert done.returncode == 0, done.stderr
    last = done.stdout.strip().splitlines()[-2:]
    assert [bool(re.fullmatch(p, line)) for p, line in zip(LAST_LINES, last, strict=True)] == [
        True,
        True,
    ], last
    written = results.read_text()
    assert "overhead per run, throughput (threads, instant providers)" in written
    assert "| 2 at once |" in written
    assert "- postgres: " in written and "- cpu: " in written


def test_an_unreachable_postgres_is_one_line_without_a_traceback(tmp_path):
    done = bench(
        "--sections",
        "overhead",
        "--results",
        str(tmp_path / "results.md"),
        database_url="postgresql+psycopg2://postgres@127.0.0.1:1/none",
    )

    assert done.returncode == 1
    assert "Traceback" not in done.stdout + done.stderr
    assert done.stdout.strip().splitlines()[-1].startswith("bench: Postgres not reachable at")
    assert not (tmp_path / "results.md").exists()


def test_an_unreachable_redis_is_one_line_when_a_section_needs_it(postgres_url, tmp_path):
    done = bench(
        "--sections",
        "celery",
        "--results",
        str(tmp_path / "results.md"),
        database_url=postgres_url,
        BENCH_REDIS_URL="redis://127.0.0.1:1/0",
    )

    assert done.returncode == 1
    assert "Traceback" not in done.stdout + done.stderr
    assert done.stdout.strip().splitlines()[-1] == (
        "bench: Redis not reachable at redis://127.0.0.1:1/0: set BENCH_REDIS_URL"
    )
    assert not (tmp_path / "results.md").exists()
