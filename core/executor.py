"""Where runs execute: `submit(workflow_id)` to a bounded thread pool in this process (the
default), inline in the caller's thread (tests, scripts), or to Celery workers (core.worker).

Only the workflow id crosses the boundary, so the same call can cross a broker. The local
executors are bound once to the function that runs a workflow (the orchestrator's
`run_workflow`); the Celery one sends a message and the worker's own orchestrator runs it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

from core.logs import run_context

log = logging.getLogger(__name__)

Job = Callable[[str], Any]


class Executor(Protocol):
    def bind(self, job: Job) -> None:
        """The function that runs one workflow in this process (ignored by remote executors)."""

    def submit(self, workflow_id: str, *, reserved: bool = False) -> None:
        """Run it; `reserved`: on the thread `reserve` kept for it."""

    def reserve(self) -> bool:
        """Keep a thread for a run about to be submitted, when one is free now (a local
        executor); False when none is, or when runs execute elsewhere."""

    def unreserve(self) -> None:
        """Give back a thread `reserve` kept, for a run that will not be submitted."""

    def revoke(self, workflow_id: str) -> None:
        """Drop a run still waiting to start, where the executor can (a broker message)."""

    def shutdown(self, *, wait: bool = True) -> None: ...

    @property
    def runs_here(self) -> bool:
        """Whether submitted runs execute in this process (recovery then runs them itself)."""


class _LocalExecutor:
    _job: Job | None = None

    def bind(self, job: Job) -> None:
        self._job = job

    def revoke(self, workflow_id: str) -> None:
        return None  # a run waiting here finds its cancel flag when it claims

    @property
    def runs_here(self) -> bool:
        return True

    def _bound(self) -> Job:
        if self._job is None:
            raise RuntimeError("executor used before bind(): the orchestrator binds it")
        return self._job


class ThreadExecutor(_LocalExecutor):
    """At most `max_workers` runs at once; the rest wait in the pool's queue (and in the
    database as `queued`, so a restart loses none of them)."""

    def __init__(self, max_workers: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="reelforge-run")
        self._max_workers = max_workers
        self._taken = 0  # runs submitted and not finished, and threads reserved
        self._count = threading.Lock()

    def submit(self, workflow_id: str, *, reserved: bool = False) -> None:
        if not reserved:
            with self._count:
                self._taken += 1
        future = self._pool.submit(_in_run_context, self._bound(), workflow_id)
        future.add_done_callback(self._finished)

    def reserve(self) -> bool:
        with self._count:
            if self._taken >= self._max_workers:
                return False
            self._taken += 1
            return True

    def unreserve(self) -> None:
        self._give_back()

    def _finished(self, future: Future[Any]) -> None:
        self._give_back()  # the run's thread is free again
        _log_crash(future)

    def _give_back(self) -> None:
        with self._count:
            self._taken -= 1

    def shutdown(self, *, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=True)


class InlineExecutor(_LocalExecutor):
    """Runs each job at once in the caller's thread: tests and scripts that want no threads."""

    def submit(self, workflow_id: str, *, reserved: bool = False) -> None:
        _in_run_context(self._bound(), workflow_id)

    def reserve(self) -> bool:
        return True  # the caller's thread runs it as soon as it is submitted

    def unreserve(self) -> None:
        return None

    def shutdown(self, *, wait: bool = True) -> None:
        return None


def _in_run_context(job: Job, workflow_id: str) -> Any:
    """The run's id (and then its step) on every line logged while it runs (core.logs)."""
    with run_context(workflow_id):
        return job(workflow_id)


def _log_crash(future) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("Runner crashed", exc_info=future.exception())
