"""500 concurrent run streams on one API process: its CPU and memory, and the delay from a state
change committed in the database to its event reaching a client (p50/p95).

A scratch Postgres database on BENCH_DATABASE_URL's (or TEST_DATABASE_URL's) server; the API is
`python -m core api` in a subprocess with its default stream settings; the clients are one asyncio
process with httpx, one stream per run. This process writes the state changes itself, through the
engine's own write path (a runner's progress writes, each in its transaction with its event), so
the API process does nothing but serve the streams.

    make bench-sse          # or: python bench/sse.py --streams 500 --rate 100 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import httpx
import psutil
from httpx_sse import aconnect_sse

from core import run_events, tokens, workflows
from core.auth import create_user
from core.clock import utcnow
from core.db import Database, scratch_database, upgrade_schema
from core.schemas import parse_request
from core.states import StepName, StepStatus

DEFAULT_BASE_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
ROOT = Path(__file__).resolve().parents[1]
RUNNER = "bench-runner"
REQUEST = parse_request({"imagePrompt": "a lighthouse at dusk", "videoPrompt": "slow push in"})


@dataclass
class Received:
    at: dict[tuple[str, int], float] = field(default_factory=dict)  # (run, progress) -> time
    connected: int = 0


def prepare(db: Database, streams: int) -> tuple[str, list[str]]:
    """A user with a token, and `streams` runs claimed by this process, their first step
    processing: the state a run is in while its progress streams."""
    with db.begin() as session:
        user = create_user(session, "bench@example.com", starting_credits=1_000_000)
        secret = tokens.create_token(session, user.id, name="bench").secret
    runs = []
    for n in range(streams):
        workflow_id = workflows.start_workflow(
            db, user_id=user.id, request=REQUEST, client_key=f"bench-{n}", actor="bench"
        ).workflow_id
        with db.begin() as session:
            workflows.claim(session, workflow_id, RUNNER, stale_before=utcnow())
            deadline = utcnow() + timedelta(hours=1)
            workflows.start_step(
                session, workflow_id, StepName.VALIDATE, RUNNER, deadline_at=deadline
            )
        runs.append(workflow_id)
    return secret, runs


def start_api(url: str, port: int, data_dir: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "DATA_DIR": str(data_dir),
        "API_PORT": str(port),
        # The runs belong to this process: the API's recovery must leave them alone.
        "HEARTBEAT_STALE_S": "3600",
        "RECOVERY_INTERVAL_S": "3600",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "core", "api"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def follow(client: httpx.AsyncClient, workflow_id: str, after: int, got: Received) -> None:
    headers = {"Last-Event-ID": str(after)}
    async with aconnect_sse(
        client, "GET", f"/api/workflow/{workflow_id}/stream", headers=headers
    ) as source:
        got.connected += 1
        async for sse in source.aiter_sse():
            if sse.event == "step":
                got.at[(workflow_id, sse.json()["progress"])] = time.time()


def write_progress(db: Database, runs: list[str], rate: float, seconds: float) -> dict:
    """Progress writes spread evenly over `seconds` at `rate` per second, round-robin over the
    runs; returns when each was committed."""
    committed: dict[tuple[str, int], float] = {}
    total = int(rate * seconds)
    begin = time.monotonic()
    for n in range(total):
        workflow_id, progress = runs[n % len(runs)], 1 + n // len(runs)
        time.sleep(max(0.0, begin + n / rate - time.monotonic()))
        with db.begin() as session:
            workflows.write_step(
                session,
                workflow_id,
                StepName.VALIDATE,
                StepStatus.PROCESSING,
                RUNNER,
                progress=progress,
                message=f"bench {progress}",
            )
        committed[(workflow_id, progress)] = time.time()
    return committed


def api_usage(process: psutil.Process, seconds: float) -> tuple[float, float]:
    """The API process's CPU (% of one core) over `seconds`, and its RSS (MB) at the end."""
    before = process.cpu_times()
    time.sleep(seconds)
    after = process.cpu_times()
    cpu = (after.user + after.system - before.user - before.system) / seconds * 100
    return cpu, process.memory_info().rss / 2**20


async def bench(url: str, streams: int, rate: float, seconds: float) -> None:
    db = Database.from_url(url)
    secret, runs = prepare(db, streams)
    with db.read() as session:
        cursors = {wid: run_events.last_seq(session, wid) for wid in runs}
    port = free_port()
    with tempfile.TemporaryDirectory() as data_dir:
        api = start_api(url, port, Path(data_dir))
        try:
            await wait_healthy(f"http://127.0.0.1:{port}", api)
            process = psutil.Process(api.pid)
            rss_before = process.memory_info().rss / 2**20
            got = Received()
            limits = httpx.Limits(max_connections=streams + 10)
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}",
                headers={"Authorization": f"Bearer {secret}"},
                limits=limits,
                timeout=httpx.Timeout(60, pool=120),
            ) as client:
                tasks = [asyncio.create_task(follow(client, w, cursors[w], got)) for w in runs]
                while got.connected < streams:
                    await asyncio.sleep(0.1)
                idle_cpu, idle_rss = await asyncio.to_thread(api_usage, process, 5)
                usage: list[tuple[float, float]] = []
                probe = threading.Thread(
                    target=lambda: usage.append(api_usage(process, seconds)), daemon=True
                )
                probe.start()
                committed = await asyncio.to_thread(write_progress, db, runs, rate, seconds)
                deadline = time.monotonic() + 10
                while len(got.at) < len(committed) and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                probe.join()
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            api.terminate()
            api.wait(timeout=30)
            db.dispose()
    delays = sorted((got.at[key] - at) * 1000 for key, at in committed.items() if key in got.at)
    load_cpu, load_rss = usage[0]
    print(f"streams: {streams} open on one API process (poll interval: the default)")
    print(f"API process RSS: {rss_before:.0f} MB before the streams, {idle_rss:.0f} MB with them")
    print(f"API CPU, {streams} idle streams: {idle_cpu:.1f}% of one core")
    print(
        f"API CPU, {rate:.0f} state changes/s for {seconds:.0f} s: {load_cpu:.1f}% of one core, "
        f"RSS {load_rss:.0f} MB"
    )
    print(f"events delivered: {len(delays)} of {len(committed)}")
    if delays:
        p50 = statistics.median(delays)
        p95 = delays[min(len(delays) - 1, int(0.95 * len(delays)))]
        print(
            f"commit -> client delay: p50 {p50:.0f} ms, p95 {p95:.0f} ms, max {delays[-1]:.0f} ms"
        )


async def wait_healthy(url: str, api: subprocess.Popen) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(600):
            if api.poll() is not None:
                raise RuntimeError("the API exited early")
            try:
                if (await client.get(f"{url}/openapi.json")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("the API did not start")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--rate", type=float, default=100, help="state changes per second")
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    base = os.environ.get("BENCH_DATABASE_URL") or os.environ.get(
        "TEST_DATABASE_URL", DEFAULT_BASE_URL
    )
    with scratch_database(base, prefix="reelforge_bench_sse") as url:
        upgrade_schema(url)
        asyncio.run(bench(url, args.streams, args.rate, args.seconds))


if __name__ == "__main__":
    main()
