"""EXECUTOR=celery with the real parts: Redis, `python -m core worker` subprocesses, Postgres.

Two groups of workers, each started once for the tests that share it: instant runs on a private
Redis (which one test restarts), and runs slow enough to be caught mid-step on TEST_REDIS_URL
(cancel, and a worker killed mid-video).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select

from core import credits, liveness, workflows
from core.auth import Role, UserView, create_user
from core.clock import utcnow
from core.config import Settings
from core.db import Database, scratch_database, upgrade_schema
from core.models import ApiCall, CreditTransaction
from core.runtime import Runtime
from core.schemas import parse_request
from core.states import StepName, StepStatus, WorkflowStatus
from core.workflows import WorkflowView
from tests.helpers import ENGINE_ENV, free_port, wait_for

REPO = Path(__file__).resolve().parents[1]
HOST = socket.gethostname()
REQUEST = parse_request(
    {
        "imagePrompt": "a lighthouse at dusk",
        "videoPrompt": "slow pan",
        "imageConfig": {"size": "1024x1024"},
        "videoConfig": {"duration": "4s", "generateAudio": False},
    }
)
OPERATOR = UserView(0, "ops", "ops", Role.ADMIN, 0, True)  # cancels any run, as the CLI does
# Short beats so a test sees recovery act in about a second (defaults: 5 s, 60 s, 30 s).
ENGINE = {
    "HEARTBEAT_INTERVAL_S": "0.2",
    "HEARTBEAT_STALE_S": "10",
    "RECOVERY_INTERVAL_S": "0.5",
    "POLL_INTERVAL_S": "0.05",
    "PROGRESS_MIN_INTERVAL_S": "0",
    "RETRY_INITIAL_WAIT_S": "0",
    "RETRY_MAX_WAIT_S": "0",
}


class Worker:
    """One `python -m core worker` process, its output kept in a file."""

    def __init__(self, env: dict[str, str], log: Path, concurrency: int) -> None:
        self.log = log
        with log.open("w") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "core", "worker", "--concurrency", str(concurrency)],
                env=env,
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @property
    def id(self) -> str:
        return f"{HOST}:{self.process.pid}"

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Cluster:
    """Workers on one database and broker, and an engine that hands runs to them."""

    db: Database
    runtime: Runtime
    workers: list[Worker]

    def user(self, credits_: int = 1000) -> UserView:
        with self.db.begin() as session:
            email = f"w-{uuid.uuid4().hex[:8]}@example.com"
            return create_user(session, email, starting_credits=credits_)

    def start(self, user: UserView, count: int = 1) -> list[str]:
        return [self.runtime.start_workflow(user, REQUEST)[0] for _ in range(count)]

    def runs(self, ids: list[str]) -> list[WorkflowView]:
        with self.db.read() as session:
            return [workflows.load_workflow(session, wid) for wid in ids]

    def wait_ended(self, ids: list[str], timeout_s: float) -> list[WorkflowView]:
        wait_for(lambda: all(r.status.is_terminal for r in self.runs(ids)), timeout_s)
        return self.runs(ids)


@contextmanager
def cluster(
    database_url: str, broker: str, tmp: Path, *, workers: int, concurrency: int, **env_extra: str
) -> Iterator[Cluster]:
    env = {k: v for k, v in os.environ.items() if k not in ENGINE_ENV}
    env.update(ENGINE)
    env.update(env_extra)
    env.update(EXECUTOR="celery", DATABASE_URL=database_url, REDIS_URL=broker, DATA_DIR=str(tmp))
    started = [Worker(env, tmp / f"worker-{i}.log", concurrency) for i in range(workers)]
    settings = Settings(
        _env_file=None, executor="celery", redis_url=broker, database_url=database_url, data_dir=tmp
    )
    runtime = Runtime(settings, upgrade=False)
    try:
        # Listed in the workers table: each has its engine, housekeeping and recovery going.
        wait_for(lambda: _listed(runtime.db) >= {w.id for w in started}, timeout_s=90)
        yield Cluster(runtime.db, runtime, started)
    finally:
        for worker in started:
            worker.stop()
        runtime.shutdown()


def _listed(db: Database) -> set[str]:
    with db.read() as session:
        seen_after = utcnow() - timedelta(seconds=30)
        return {w.id for w in liveness.live_workers(session, seen_after=seen_after)}


@contextmanager
def own_database(postgres_url: str) -> Iterator[str]:
    """A database per group of workers: they outlive any one test, and one group's recovery
    must not hand the other's runs to its own workers."""
    with scratch_database(postgres_url, prefix="reelforge_workers") as url:
        upgrade_schema(url)
        yield url


@pytest.fixture(scope="module")
def private_redis(redis_url: str, tmp_path_factory) -> Iterator[RedisServer]:
    """A redis-server of this module's own (the restart test restarts it); the shared one
    never is. Needs TEST_REDIS_URL like every Celery test, and Debian's redis-server."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (.ci/run installs it)")
    server = RedisServer(free_port(), tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


class RedisServer:
    def __init__(self, port: int, directory: Path) -> None:
        self.port, self.directory = port, directory
        self.url = f"redis://127.0.0.1:{port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
            + ["--save", "", "--appendonly", "no", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL,
        )
        wait_for(self._answers, timeout_s=20)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=20)

    def _answers(self) -> bool:
        try:
            return bool(redis.Redis.from_url(self.url).ping())
        except redis.RedisError:
            return False


@pytest.fixture(scope="module")
def instant(postgres_url, private_redis, tmp_path_factory) -> Iterator[Cluster]:
    """Two workers, instant providers, on the private Redis."""
    tmp = tmp_path_factory.mktemp("instant")
    with (
        own_database(postgres_url) as url,
        cluster(
            url, private_redis.url, tmp, workers=2, concurrency=4, OFFLINE_LATENCY_S="0"
        ) as running,
    ):
        yield running


@pytest.fixture(scope="module")
def slow(postgres_url, redis_url, tmp_path_factory) -> Iterator[Cluster]:
    """Two workers of two slots each; every provider call takes about a second, so a run can
    be caught mid-step (about 8 s a run). A heartbeat goes stale only after ten minutes here:
    a takeover within the test can only come from the dead runner's free run lock. On
    TEST_REDIS_URL, emptied first."""
    redis.Redis.from_url(redis_url).flushdb()
    tmp = tmp_path_factory.mktemp("slow")
    with (
        own_database(postgres_url) as url,
        cluster(
            url,
            redis_url,
            tmp,
            workers=2,
            concurrency=2,
            OFFLINE_LATENCY_S="1",
            HEARTBEAT_STALE_S="600",
        ) as running,
    ):
        yield running


# Real worker processes encoding real MP4s: minutes on a busy two-core machine, never a target.
pytestmark = pytest.mark.timeout(900)


# -- checks -------------------------------------------------------------------------------------


def max_overlap(runs: list[WorkflowView]) -> int:
    """The most of these runs running at one instant, from their start and end times."""
    edges = sorted(
        [(r.started_at, 1) for r in runs if r.started_at]
        + [(r.finished_at, -1) for r in runs if r.finished_at],
        key=lambda edge: (edge[0], edge[1]),  # an end before a start at the same instant
    )
    most = current = 0
    for _, change in edges:
        current += change
        most = max(most, current)
    return most


def generations(db: Database, ids: list[str]) -> Counter[tuple[str, str]]:
    """Paid generations per (run, operation): image generations and video submissions."""
    with db.read() as session:
        rows = session.execute(
            select(ApiCall.workflow_id, ApiCall.operation).where(
                ApiCall.workflow_id.in_(ids),
                ApiCall.outcome == "ok",
                ApiCall.operation.in_(("generate", "submit")),
            )
        )
        return Counter((wid, op) for wid, op in rows)


def assert_paid_once(
    db: Database, ids: list[str], *, image_may_repeat: frozenset[str] = frozenset()
) -> None:
    """Each run's still generated and video submitted exactly once, except the still of a run
    in `image_may_repeat` (killed before its image step finished), made at most twice."""
    counts = generations(db, ids)
    repeated = {
        (wid, op): n
        for (wid, op), n in counts.items()
        if n != 1 and not (op == "generate" and wid in image_may_repeat and n == 2)
    }
    assert repeated == {}, f"generated more than once: {repeated}"
    assert len(counts) == 2 * len(ids)


def assert_ledger_sound(db: Database, ids: list[str]) -> None:
    with db.read() as session:
        assert credits.balance_mismatches(session) == []
        refunds = Counter(
            session.scalars(
                select(CreditTransaction.workflow_id).where(
                    CreditTransaction.kind == "refund", CreditTransaction.workflow_id.in_(ids)
                )
            )
        )
    for run_id, count in refunds.items():
        assert count == 1, f"{run_id} refunded {count} times"


# -- instant workers ----------------------------------------------------------------------------


def test_two_workers_complete_fifty_runs_both_take_some_and_no_user_exceeds_its_slots(instant):
    users = [instant.user() for _ in range(5)]
    ids = [wid for user in users for wid in instant.start(user, 10)]

    runs = instant.wait_ended(ids, timeout_s=600)

    assert Counter(r.status for r in runs) == {WorkflowStatus.COMPLETED: 50}
    by_worker = Counter(r.worker_id for r in runs)
    assert set(by_worker) == {w.id for w in instant.workers}, by_worker
    for run in runs:
        assert {s.worker_id for s in run.steps} <= set(by_worker)
    for user in users:  # MAX_ACTIVE_RUNS_PER_USER=4, held across both workers
        assert max_overlap([r for r in runs if r.user_id == user.id]) <= 4
    assert_paid_once(instant.db, ids)
    assert_ledger_sound(instant.db, ids)
    print(f"\n50 runs on two workers: {dict(by_worker)}")


def test_a_message_delivered_twice_runs_its_workflow_once(instant):
    user = instant.user()
    ids = instant.start(user, 5)
    for wid in ids:  # a second message for each run, as a broker redelivery would make
        instant.runtime.orchestrator.executor.submit(wid)

    runs = instant.wait_ended(ids, timeout_s=120)

    assert all(r.status is WorkflowStatus.COMPLETED for r in runs)
    assert all(r.recoveries == 0 for r in runs)
    assert all(s.attempts == 1 for r in runs for s in r.steps)
    assert_paid_once(instant.db, ids)
    # Both messages of every run reached a worker (and any recovery re-sent on a slow day):
    # all but one found the run held or ended.
    wait_for(lambda: all(_received(instant, wid) >= 2 for wid in ids), timeout_s=30)
    received = sum(_received(instant, wid) for wid in ids)
    print(f"\nduplicate delivery: 5 runs, {received} messages received, each run executed once")


def _received(cluster_: Cluster, workflow_id: str) -> int:
    logs = "".join(w.output() for w in cluster_.workers)
    return logs.count(f"Task reelforge.run_workflow[{workflow_id}] received")


def test_redis_restarted_with_runs_in_flight_workers_reconnect_and_every_run_completes(
    instant, private_redis
):
    ids = [wid for _ in range(4) for wid in instant.start(instant.user(), 3)]
    wait_for(lambda: sum(r.status is WorkflowStatus.COMPLETED for r in instant.runs(ids)) >= 2)

    private_redis.stop()  # queued messages die with it (no persistence)
    in_flight = sum(r.status.is_active for r in instant.runs(ids))
    private_redis.start()
    after = instant.start(instant.user(), 3)  # sent on the restarted server

    runs = instant.wait_ended(ids + after, timeout_s=180)

    assert all(r.status is WorkflowStatus.COMPLETED for r in runs), Counter(r.status for r in runs)
    assert_paid_once(instant.db, ids + after)
    assert_ledger_sound(instant.db, ids + after)
    assert {r.worker_id for r in instant.runs(after)} <= {w.id for w in instant.workers}
    print(f"\nRedis restarted with {in_flight} of {len(ids)} runs not yet ended: all completed")


# -- slow workers -------------------------------------------------------------------------------


def processing(cluster_: Cluster, ids: list[str], step: StepName) -> list[WorkflowView]:
    return [
        r
        for r in cluster_.runs(ids)
        if r.status is WorkflowStatus.RUNNING and r.step(step).status is StepStatus.PROCESSING
    ]


def test_cancel_reaches_a_run_waiting_in_the_broker_and_one_running_on_a_worker(slow):
    user = slow.user()
    running = slow.start(user, 4)  # the four slots of the two workers
    wait_for(lambda: all(r.status is WorkflowStatus.RUNNING for r in slow.runs(running)), 60)
    (waiting,) = slow.start(slow.user())

    slow.runtime.cancel(waiting, OPERATOR)  # ends it in the database, then revokes it

    # Chosen while the runs are still early, before any ends (waiting for the revoked message
    # first would let them run past their video step).
    wait_for(lambda: processing(slow, running, StepName.GENERATE_VIDEO) != [], 60)
    target = processing(slow, running, StepName.GENERATE_VIDEO)[0]
    slow.runtime.cancel(target.id, OPERATOR)  # from this process, as from another machine

    # The waiting run's message stays in Redis (no worker fetches without a free slot): when a
    # slot frees, the worker that takes it drops it unrun.
    dropped = f"Discarding revoked task: reelforge.run_workflow[{waiting}]"
    wait_for(lambda: any(dropped in w.output() for w in slow.workers), timeout_s=120)

    queued_end, running_end = slow.wait_ended([waiting, target.id], timeout_s=60)
    assert queued_end.status is WorkflowStatus.CANCELLED
    assert (queued_end.started_at, queued_end.worker_id) == (None, None)  # never claimed
    assert running_end.status is WorkflowStatus.CANCELLED
    assert running_end.worker_id in {w.id for w in slow.workers}
    # Stopped inside the video step, or at the boundary after it if it had just ended.
    assert all(s.status is not StepStatus.PROCESSING for s in running_end.steps)
    assert running_end.step(StepName.FINALIZE).status is StepStatus.SKIPPED
    slow.wait_ended(running, timeout_s=60)
    assert_ledger_sound(slow.db, running + [waiting])
    with slow.db.read() as session:
        refunded = session.scalar(
            select(func.count()).where(
                CreditTransaction.kind == "refund",
                CreditTransaction.workflow_id.in_([waiting, target.id]),
            )
        )
    assert refunded == 2


def test_a_worker_killed_mid_video_has_its_runs_finished_by_the_other_within_seconds(slow):
    # Two runs on four slots: whichever worker dies, the other has a slot for each of its runs.
    ids = [slow.start(slow.user())[0] for _ in range(2)]
    wait_for(lambda: processing(slow, ids, StepName.GENERATE_VIDEO) != [], timeout_s=60)
    victim_id = processing(slow, ids, StepName.GENERATE_VIDEO)[0].worker_id
    (victim,) = [w for w in slow.workers if w.id == victim_id]
    (survivor,) = [w for w in slow.workers if w is not victim]
    held = [r.id for r in slow.runs(ids) if r.worker_id == victim.id and r.status.is_active]
    # Read before the kill: a run of the victim's whose image step had not finished may have
    # its still made again (the provider's answer died with the process, the rule of
    # tests/test_crash_recovery.py); every other still and every video is paid once.
    image_done = {
        r.id
        for r in slow.runs(ids)
        if r.step(StepName.GENERATE_IMAGE).status is StepStatus.COMPLETED
    }
    victim.kill()
    killed_at = time.monotonic()

    # Bounds far below the ten-minute staleness: the figures printed are the measure.
    wait_for(lambda: all(r.worker_id == survivor.id for r in slow.runs(held)), timeout_s=60)
    takeover_s = time.monotonic() - killed_at
    wait_for(lambda: all(r.status.is_terminal for r in slow.runs(held)), timeout_s=120)
    finished_s = time.monotonic() - killed_at

    runs = slow.wait_ended(ids, timeout_s=60)
    assert all(r.status is WorkflowStatus.COMPLETED for r in runs)
    assert all(r.recoveries == 1 for r in slow.runs(held))
    assert_paid_once(slow.db, ids, image_may_repeat=frozenset(held) - image_done)
    assert_ledger_sound(slow.db, ids)
    print(
        f"\nkilled {victim.id} holding {len(held)} runs mid-video: taken over by {survivor.id} "
        f"{takeover_s:.2f} s after the kill, finished {finished_s:.2f} s after it"
    )
