"""The peers the engine is measured against, in their own virtualenv (.venv-peers): the same six
no-op steps as a Celery chain on Redis (solo worker, Redis result backend), as that chain with one
Postgres statement per step, and as a Prefect 3 flow of six tasks (local ephemeral server,
default settings). Never imports `core`.

The harness (bench/engine.py) starts this as a subprocess and drives it over stdin/stdout, one
JSON object a line, so its rounds interleave with the engine's:
    -> {"peer": "celery" | "celery_pg" | "prefect", "runs": 5}
    <- {"walls": [seconds per run, ...]}
The first line written is {"versions": {...}} once both peers are warm.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import psycopg2
import redis

HERE = Path(__file__).resolve().parent


def _start_celery_worker() -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "peer_tasks",
            "worker",
            "--pool=solo",
            "--queues=bench-peer",
            "--loglevel=WARNING",
            "--without-mingle",
            "--without-gossip",
            f"--hostname=bench-peer-{uuid.uuid4().hex[:8]}@%h",
        ],
        cwd=HERE,
        env={**os.environ, "PYTHONPATH": str(HERE)},
        stdout=subprocess.DEVNULL,
        stderr=sys.stderr,
    )


def _make_table() -> None:
    with psycopg2.connect(os.environ["PEER_DATABASE_URL"]) as connection:
        with connection.cursor() as cursor:
            cursor.execute(
                "CREATE TABLE IF NOT EXISTS peer_runs "
                "(id text PRIMARY KEY, step text NOT NULL, updated_at timestamptz NOT NULL)"
            )


def celery_runner(task_name: str) -> Callable[[], None]:
    import peer_tasks
    from celery import chain

    task = getattr(peer_tasks, task_name)

    def run() -> None:
        run_id = uuid.uuid4().hex
        result = chain(task.si(run_id, name) for name in peer_tasks.STEPS).apply_async()
        result.get(timeout=60)

    return run


def prefect_runner() -> Callable[[], None]:
    import peer_tasks
    from prefect import flow, task

    @task
    def step(run_id: str, name: str) -> str:
        return run_id

    @flow
    def video_flow(run_id: str) -> None:
        for name in peer_tasks.STEPS:
            step(run_id, name)

    return lambda: video_flow(uuid.uuid4().hex)


def _timed(run: Callable[[], None], runs: int) -> list[float]:
    walls = []
    for _ in range(runs):
        started = time.perf_counter()
        run()
        walls.append(time.perf_counter() - started)
    return walls


def main() -> None:
    # Answers go to the harness on the original stdout; anything the peers print (Prefect's
    # console log) goes to stderr instead, where it cannot break a JSON line.
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.path.insert(0, str(HERE))
    redis.Redis.from_url(os.environ["PEER_REDIS_URL"]).ping()
    _make_table()
    worker = _start_celery_worker()
    try:
        runners = {
            "celery": celery_runner("step"),
            "celery_pg": celery_runner("persisted_step"),
            "prefect": prefect_runner(),
        }
        for run in runners.values():  # warm-up: worker ready, ephemeral server up, imports
            _timed(run, 2)
        names = ("celery", "redis", "prefect", "psycopg2-binary")
        versions = {name: version(name) for name in names}
        versions["python"] = sys.version.split()[0]
        print(json.dumps({"versions": versions}), file=answers, flush=True)
        for line in sys.stdin:
            command = json.loads(line)
            walls = _timed(runners[command["peer"]], command["runs"])
            print(json.dumps({"walls": walls}), file=answers, flush=True)
    finally:
        worker.terminate()
        worker.wait(timeout=30)


if __name__ == "__main__":
    main()
