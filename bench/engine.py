"""Engine overhead per workflow: wall time minus provider time, on SQLite and Postgres.

Runs workflows in-process on the offline providers with OFFLINE_LATENCY_S=0 and subtracts the
time spent inside provider calls (as recorded in api_calls), leaving the engine's own cost: every
database write, check and verification. Also times one `python -m core run` end to end.
Postgres is used when BENCH_DATABASE_URL or TEST_DATABASE_URL names a server.

    make bench            # or: python bench/engine.py --workflows 10
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from rich.console import Console
from rich.table import Table
from sqlalchemy import event, func, select

from core.auth import create_user
from core.config import Settings
from core.db import scratch_database, upgrade_schema
from core.executor import InlineExecutor
from core.models import ApiCall
from core.runtime import Runtime
from core.schemas import parse_request

PAYLOAD = {
    "imagePrompt": "a red fox in fresh snow",
    "videoPrompt": "slow dolly in, snow falling",
    "imageConfig": {"size": "1024x1024"},
    "videoConfig": {"duration": "4s", "generateAudio": False},
}
console = Console()


def measure(url: str, workdir: Path, workflows: int) -> dict[str, float]:
    upgrade_schema(url)
    settings = Settings(
        _env_file=None,
        data_dir=workdir,
        database_url=url,
        offline_latency_s=0,
        poll_interval_s=0.0,
        progress_min_interval_s=0.5,
    )
    runtime = Runtime(settings, upgrade=False, executor=InlineExecutor())
    counts = {"statements": 0, "transactions": 0}
    event.listen(runtime.db.engine, "before_cursor_execute", lambda *a: _bump(counts, "statements"))
    event.listen(runtime.db.engine, "commit", lambda *a: _bump(counts, "transactions"))
    with runtime.db.begin() as session:
        user = create_user(session, "bench@example.com", starting_credits=100_000)
    request = parse_request(PAYLOAD)
    runtime.start_workflow(user, request)  # warm-up: imports, codec init, connection pool
    counts.update(statements=0, transactions=0)
    walls, providers = [], []
    for _ in range(workflows):
        started = time.perf_counter()
        workflow_id, _ = runtime.start_workflow(user, request)
        walls.append(time.perf_counter() - started)
        with runtime.db.read() as session:
            provider_ms = session.scalar(
                select(func.sum(ApiCall.duration_ms)).where(ApiCall.workflow_id == workflow_id)
            )
        providers.append(provider_ms / 1000)
    runtime.shutdown()
    engine = [w - p for w, p in zip(walls, providers, strict=True)]
    return {
        "wall_s": statistics.median(walls),
        "provider_s": statistics.median(providers),
        "engine_ms": statistics.median(engine) * 1000,
        "engine_p_max_ms": max(engine) * 1000,
        "statements": counts["statements"] / workflows,
        "transactions": counts["transactions"] / workflows,
    }


def _bump(counts: dict[str, int], key: str) -> None:
    counts[key] += 1


def time_cli(workdir: Path) -> float:
    env = {**os.environ, "OFFLINE_LATENCY_S": "0", "DATA_DIR": str(workdir)}
    env.pop("DATABASE_URL", None)
    started = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "core",
            "run",
            "--image-prompt",
            "a red fox in fresh snow",
            "--video-prompt",
            "slow dolly in, snow falling",
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workflows", type=int, default=10)
    args = parser.parse_args()
    table = Table(title=f"Engine cost per workflow (median of {args.workflows}, 4 s 720p clip)")
    for column in ("database", "wall", "in providers", "engine", "engine max", "SQL stmts", "txns"):
        table.add_column(column, justify="right")
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as scratch:
        targets = [("sqlite", f"sqlite:///{tmp}/bench.db")]
        base = os.environ.get("BENCH_DATABASE_URL") or os.environ.get("TEST_DATABASE_URL")
        if base:
            postgres = scratch.enter_context(scratch_database(base, prefix="reelforge_bench"))
            targets.append(("postgres", postgres))
        for name, url in targets:
            r = measure(url, Path(tmp) / name, args.workflows)
            table.add_row(
                name,
                f"{r['wall_s']:.3f} s",
                f"{r['provider_s']:.3f} s",
                f"{r['engine_ms']:.1f} ms",
                f"{r['engine_p_max_ms']:.1f} ms",
                f"{r['statements']:.0f}",
                f"{r['transactions']:.0f}",
            )
        console.print(table)
        cli_s = time_cli(Path(tmp) / "cli")
    console.print(
        f"python -m core run (8 s 720p clip with audio, offline, latency 0): {cli_s:.2f} s"
    )


if __name__ == "__main__":
    main()
