"""Driving the engine for the benchmark, through its public entry points only: a Runtime (threads
executor in this process, or Celery's through Redis to `python -m core worker` processes),
`start_workflow`, and the run's own rows read back afterwards.

A run's wall time is from just before `start_workflow` to the `finished_at` the engine stamped
when it ended it (one clock: both are the machine's UTC time); its provider time is the sum of
its api_calls durations. What is left is the engine's own cost per run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

from sqlalchemy import func, select

from core import logs
from core.auth import UserView, create_user
from core.config import Settings
from core.db import Database
from core.models import ApiCall, Workflow
from core.providers import build_providers
from core.providers.base import Providers
from core.runtime import Runtime
from core.schemas import parse_request
from core.states import WorkflowStatus

ROOT = Path(__file__).resolve().parents[1]
# The smallest clip the product makes: the offline provider draws and encodes it for real, and
# that time is provider time (inside api_calls), not the engine's.
REQUEST = parse_request(
    {
        "imagePrompt": "a red fox in fresh snow",
        "videoPrompt": "slow dolly in, snow falling",
        "imageConfig": {"size": "1024x1024"},
        "videoConfig": {"duration": "4s", "generateAudio": False},
    }
)
RUN_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class RunSample:
    workflow_id: str
    wall_s: float
    provider_s: float
    status: str

    @property
    def overhead_s(self) -> float:
        return self.wall_s - self.provider_s


@dataclass(frozen=True)
class Batch:
    samples: list[RunSample]
    busy_s: float  # from each round's first submit to its last finish, summed over rounds

    @property
    def throughput(self) -> float:
        return len(self.samples) / self.busy_s

    @property
    def failed(self) -> int:
        return sum(s.status != WorkflowStatus.COMPLETED.value for s in self.samples)


def settings_for(url: str, data_dir: Path, **overrides: Any) -> Settings:
    """The engine's settings for a benchmark runtime: the product's defaults, offline providers,
    and whatever the case sets (latency, threads, per-user limit, executor)."""
    return Settings(_env_file=None, data_dir=data_dir, database_url=url, **overrides)


def bench_user(db: Database, email: str) -> UserView:
    with db.begin() as session:
        return create_user(session, email, starting_credits=100_000_000)


@contextmanager
def runtime(settings: Settings, providers: Providers | None = None) -> Iterator[Runtime]:
    """A Runtime as a process of the product runs it (heartbeats, recovery, webhooks); runs
    execute here with EXECUTOR=threads, in the workers with EXECUTOR=celery."""
    engine = Runtime(settings, upgrade=False, providers=providers)
    if settings.executor == "threads":
        engine.start_background()
    try:
        yield engine
    finally:
        engine.shutdown()


def run_rounds(
    engine: Runtime,
    user: UserView,
    concurrency: int,
    runs: int,
    clock: ProviderClock | None = None,
) -> Batch:
    """`runs` runs in rounds of `concurrency` started together; each round waits for all of its
    runs to end before the next starts. Provider time per run: from `clock` when the runs'
    providers are timed here, else from their api_calls."""
    samples: list[RunSample] = []
    busy = 0.0
    while len(samples) < runs:
        submitted: dict[str, float] = {}
        for _ in range(min(concurrency, runs - len(samples))):
            at = time.time()
            workflow_id, _ = engine.start_workflow(user, REQUEST)
            submitted[workflow_id] = at
        ended = wait_ended(engine.db, submitted, clock)
        busy += max(s.wall_s + submitted[s.workflow_id] for s in ended) - min(submitted.values())
        samples += ended
    return Batch(samples, busy)


def wait_ended(
    db: Database, submitted: dict[str, float], clock: ProviderClock | None = None
) -> list[RunSample]:
    """Wait until every run in `submitted` (id -> start time) has ended; their samples.

    Polled every 25 ms, the first time 25 ms after the round's starts: the poll only decides
    when the next round starts (the times come from the rows), and a poll is work in this
    process, beside the runs it times. One sent at once would take the CPU from the runs just
    started (about 0.3 ms of Python each), where a peer's harness waits in a blocking call."""
    ids = list(submitted)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        time.sleep(0.025)
        with db.read() as session:
            ended = session.execute(
                select(Workflow.id, Workflow.status, Workflow.finished_at).where(
                    Workflow.id.in_(ids), Workflow.finished_at.is_not(None)
                )
            ).all()
        if len(ended) == len(ids):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(ids) - len(ended)} runs did not end in {RUN_TIMEOUT_S} s")
    provider = clock.by_run() if clock is not None else recorded_provider_seconds(db, ids)
    return [
        RunSample(
            workflow_id,
            finished_at.timestamp() - submitted[workflow_id],
            provider.get(workflow_id, 0.0),
            status,
        )
        for workflow_id, status, finished_at in ended
    ]


def recorded_provider_seconds(db: Database, ids: list[str]) -> dict[str, float]:
    """Provider time per run as its api_calls recorded it (whole milliseconds per call)."""
    with db.read() as session:
        rows = session.execute(
            select(ApiCall.workflow_id, func.sum(ApiCall.duration_ms))
            .where(ApiCall.workflow_id.in_(ids))
            .group_by(ApiCall.workflow_id)
        ).all()
    return {workflow_id: total / 1000 for workflow_id, total in rows}


# --- Time inside providers, from outside --------------------------------------------------------


class ProviderClock:
    """Time inside provider methods per run, measured around every call with perf_counter.

    api_calls hold whole milliseconds per call: a run with instant providers makes fifteen
    calls of a fraction of a millisecond each, which round (mostly down) to nothing there, and
    that time would count as the engine's. The run is the one the calling thread executes
    (core.logs' run context), so this works where the runs execute in this process."""

    def __init__(self) -> None:
        self._seconds: dict[str | None, float] = defaultdict(float)
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        run = logs.current_run_id()
        with self._lock:
            self._seconds[run] += seconds

    def by_run(self) -> dict[str, float]:
        with self._lock:
            return {run: s for run, s in self._seconds.items() if run is not None}

    def total(self) -> float:
        with self._lock:
            return sum(self._seconds.values())

    def reset(self) -> None:
        with self._lock:
            self._seconds.clear()


class _Timed:
    """A provider with every method call timed on a ProviderClock."""

    def __init__(self, inner: Any, clock: ProviderClock) -> None:
        self._inner, self._clock = inner, clock

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if not callable(value):
            return value

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return value(*args, **kwargs)
            finally:
                self._clock.add(time.perf_counter() - started)

        return timed


def timed(providers: Providers, clock: ProviderClock) -> Providers:
    """`providers` with every method call of each timed on `clock`."""
    return Providers(
        image=_Timed(providers.image, clock),
        video=_Timed(providers.video, clock),
        moderator=_Timed(providers.moderator, clock),
        storage=_Timed(providers.storage, clock),
        labels=providers.labels,
    )


# --- Instant providers ----------------------------------------------------------------------


class _DrawnOnce:
    """The offline image generator, drawing each still once in this process: later calls wait
    the latency and hand back the same PNG."""

    _drawn: dict[Any, Any] = {}
    _lock = threading.Lock()

    def __init__(self, inner: Any) -> None:
        self._inner, self.name = inner, inner.name

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def generate(self, spec: Any, *, timeout_s: float) -> Any:
        with self._lock:
            if spec not in self._drawn:
                self._drawn[spec] = self._inner.generate(spec, timeout_s=timeout_s)
                return self._drawn[spec]
        time.sleep(self._inner.latency_s)
        return self._drawn[spec]


class _EncodedOnce:
    """The offline video service (its queue, latency and status as they are), encoding one clip
    in this process: every later job's result is that clip, a real MP4 the engine downloads,
    probes and stores."""

    _clips: dict[Path, Any] = {}  # by the service's job folder
    _lock = threading.Lock()

    def __init__(self, inner: Any) -> None:
        self._inner, self.name = inner, inner.name

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def result(self, request_id: str) -> Any:
        with self._lock:
            clip = self._clips.get(self._inner.job_dir)
            if clip is None or not Path(url2pathname(urlparse(clip.url).path)).exists():
                clip = self._clips[self._inner.job_dir] = self._inner.result(request_id)
            return clip


def instant_providers(settings: Settings) -> Providers:
    """The offline providers without their CPU work: the still is drawn and the clip encoded
    once, then reused. Latency (OFFLINE_LATENCY_S) and everything the engine does to the files
    stay; what is measured is the engine, not the machine's video encoder."""
    real = build_providers(settings)
    return Providers(
        image=_DrawnOnce(real.image),
        video=_EncodedOnce(real.video),
        moderator=real.moderator,
        storage=real.storage,
        labels=real.labels,
    )


# --- Celery workers ----------------------------------------------------------------------------


@contextmanager
def celery_workers(
    count: int, concurrency: int, env: dict[str, str], log: Path
) -> Iterator[list[subprocess.Popen]]:
    """`count` product workers (`python -m core worker`), stopped (SIGTERM, as an operator
    would) when the block ends."""
    with log.open("ab") as sink:
        workers = [
            subprocess.Popen(
                [sys.executable, "-m", "core", "worker", "--concurrency", str(concurrency)],
                cwd=ROOT,
                env={**os.environ, **env},
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
            for _ in range(count)
        ]
        try:
            yield workers
        finally:
            for worker in workers:
                worker.terminate()
            for worker in workers:
                try:
                    worker.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    worker.kill()


def warm_up(engine: Runtime, user: UserView, runs: int = 1) -> None:
    """Imports, codec start-up, connection pools and (with Celery) the workers' readiness: the
    first runs are not measured."""
    run_rounds(engine, user, runs, runs)
