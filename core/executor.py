"""Where runs execute: a bounded thread pool in this process (the default), or inline.

The scale-out executor (Celery on Redis) runs the same `run_workflow(workflow_id)`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

log = logging.getLogger(__name__)

Job = Callable[[str], Any]


class Executor(Protocol):
    def submit(self, job: Job, workflow_id: str) -> None: ...

    def shutdown(self, *, wait: bool = True) -> None: ...


class ThreadExecutor:
    """At most `max_workers` runs at once; the rest wait in the pool's queue (and in the
    database as `queued`, so a restart loses none of them)."""

    def __init__(self, max_workers: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="reelforge-run")

    def submit(self, job: Job, workflow_id: str) -> None:
        future = self._pool.submit(job, workflow_id)
        future.add_done_callback(_log_crash)

    def shutdown(self, *, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=True)


class InlineExecutor:
    """Runs each job at once in the caller's thread: tests and scripts that want no threads."""

    def submit(self, job: Job, workflow_id: str) -> None:
        job(workflow_id)

    def shutdown(self, *, wait: bool = True) -> None:
        return None


def _log_crash(future) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("Runner crashed", exc_info=future.exception())
