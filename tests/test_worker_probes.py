"""A real `python -m core worker` as an operator meets it: `/metrics`, `/livez` and `/readyz` on its
METRICS_PORT, its counters across a failed run and its refund (every provider call failing
transiently, through the offline providers' fault injection), its JSON log lines, and its
readiness once its database is gone. Postgres and Redis, like every Celery test."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy import create_engine, make_url, text

from core import workflows
from core.auth import create_user
from core.config import Settings
from core.db import scratch_database, upgrade_schema
from core.runtime import Runtime
from core.schemas import parse_request
from core.states import WorkflowStatus
from tests.helpers import ENGINE_ENV, free_port, run_core, scrape, wait_for

REPO = Path(__file__).resolve().parents[1]
REQUEST = parse_request(
    {
        "imagePrompt": "a lighthouse at dusk",
        "videoPrompt": "slow pan",
        "imageConfig": {"size": "1024x1024"},
        "videoConfig": {"duration": "4s", "generateAudio": False},
    }
)
ATTEMPTS = 3

pytestmark = pytest.mark.timeout(600)


@dataclass
class FaultyWorker:
    url: str  # its probes
    database_url: str
    runtime: Runtime  # the test's side: starts runs that the worker executes
    process: subprocess.Popen
    log: Path

    @property
    def id(self) -> str:
        return f"{socket.gethostname()}:{self.process.pid}"

    def log_lines(self) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if line.strip()]


def _answers(url: str, process: subprocess.Popen, log: Path) -> bool:
    if process.poll() is not None:
        raise RuntimeError(f"the worker exited early:\n{log.read_text()[-3000:]}")
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(scope="module")
def worker(postgres_url: str, redis_url: str, tmp_path_factory) -> Iterator[FaultyWorker]:
    """One worker whose every provider call fails transiently, JSON logs, probes on a port."""
    redis.Redis.from_url(redis_url).flushdb()
    tmp = tmp_path_factory.mktemp("probed")
    port = free_port()
    with scratch_database(postgres_url, prefix="reelforge_probes") as url:
        upgrade_schema(url)
        env = {k: v for k, v in os.environ.items() if k not in ENGINE_ENV}
        env.update(
            EXECUTOR="celery",
            DATABASE_URL=url,
            REDIS_URL=redis_url,
            DATA_DIR=str(tmp),
            OFFLINE_LATENCY_S="0",
            FAULT_TRANSIENT_RATE="1",
            RETRY_MAX_ATTEMPTS=str(ATTEMPTS),
            RETRY_INITIAL_WAIT_S="0",
            RETRY_MAX_WAIT_S="0",
            HEARTBEAT_INTERVAL_S="0.2",
            RECOVERY_INTERVAL_S="0.5",
            METRICS_PORT=str(port),
            LOG_FORMAT="json",
        )
        log = tmp / "worker.log"
        with log.open("w") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "core", "worker", "--concurrency", "2"],
                env=env,
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        settings = Settings(
            _env_file=None, executor="celery", redis_url=redis_url, database_url=url, data_dir=tmp
        )
        runtime = Runtime(settings, upgrade=False)
        probes = f"http://127.0.0.1:{port}"
        try:
            wait_for(lambda: _answers(f"{probes}/livez", process, log), timeout_s=90)
            # Listed as a live celery worker: its engine is up and its task consumer too.
            wait_for(
                lambda: (
                    scrape(f"{probes}/metrics").value("reelforge_workers_alive", kind="celery") == 1
                ),
                timeout_s=90,
            )
            yield FaultyWorker(probes, url, runtime, process, log)
        finally:
            process.terminate()
            process.wait(timeout=30)
            runtime.shutdown()


def test_a_failed_run_moves_the_workers_failure_retry_error_and_refund_counters(worker):
    before = scrape(f"{worker.url}/metrics")
    with worker.runtime.db.begin() as session:
        user = create_user(session, f"p-{uuid.uuid4().hex[:8]}@example.com", starting_credits=100)
    workflow_id, _ = worker.runtime.start_workflow(user, REQUEST)

    def failed_counted() -> bool:
        moved = scrape(f"{worker.url}/metrics").moved(before, "reelforge_runs_finished_total")
        return moved == 1

    wait_for(failed_counted, timeout_s=120)
    after = scrape(f"{worker.url}/metrics")
    with worker.runtime.db.read() as session:
        run = workflows.load_workflow(session, workflow_id)
    assert run.status is WorkflowStatus.FAILED
    assert after.moved(before, "reelforge_runs_finished_total", status="failed", model="default")
    # The first call (moderation, in validate) tried ATTEMPTS times, each a transient failure.
    assert after.moved(before, "reelforge_provider_retries_total") == ATTEMPTS - 1
    errors = after.moved(before, "reelforge_provider_errors_total", category="provider_unavailable")
    assert errors == ATTEMPTS
    transient = "reelforge_provider_call_duration_seconds_count"
    assert after.moved(before, transient, outcome="transient", operation="moderate") == ATTEMPTS
    steps = "reelforge_step_duration_seconds_count"
    assert after.moved(before, steps, step="validate", outcome="failed") == 1
    assert after.moved(before, steps) == 1
    assert after.moved(before, "reelforge_refunds_total") == 1
    refunded = "reelforge_credits_refunded_total"
    assert after.moved(before, refunded, reason="refund") == run.cost_credits > 0
    assert after.value("reelforge_runs_running") == 0

    # Its JSON log: every line an object; the run's lines carry its id, step and this worker.
    entries = [json.loads(line) for line in worker.log_lines()]
    assert all({"time", "level", "logger", "message"} <= entry.keys() for entry in entries)
    of_run = [e for e in entries if e.get("run_id") == workflow_id]
    assert of_run and all(e["worker"] == worker.id for e in of_run)
    original = re.compile(rf"Workflow {workflow_id} - Step validate: failed \(\d+%\)")
    assert any(original.fullmatch(e["message"]) and e["step"] == "validate" for e in of_run)
    retried = [e for e in of_run if "retrying" in e["message"]]
    assert len(retried) == ATTEMPTS - 1 and all(e["level"] == "WARNING" for e in retried)


def test_the_workers_readiness_fails_naming_the_database_once_it_is_dropped(worker, postgres_url):
    ready = httpx.get(f"{worker.url}/readyz", timeout=10)
    assert ready.status_code == 200
    assert ready.json() == {
        "ready": True,
        "checks": {"database": "ok", "broker": "ok"},
        "failed": [],
    }
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            name = make_url(worker.database_url).database
            connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()
    gone = httpx.get(f"{worker.url}/readyz", timeout=10)
    assert gone.status_code == 503
    assert gone.json() == {
        "ready": False,
        "checks": {"database": "down", "broker": "ok"},
        "failed": ["database"],
    }
    assert httpx.get(f"{worker.url}/livez", timeout=10).status_code == 200


def test_a_worker_whose_metrics_port_is_taken_says_so_and_exits(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if k not in ENGINE_ENV}
        env.update(
            DATABASE_URL=f"sqlite:///{tmp_path / 'reelforge.db'}",
            REDIS_URL="redis://127.0.0.1:1/0",  # never reached: the worker stops before
            METRICS_PORT=str(port),
        )
        done = run_core(env, REPO, "worker")
    assert done.returncode == 1
    assert f"METRICS_PORT {port}" in done.stderr
    assert "Traceback" not in done.stderr
