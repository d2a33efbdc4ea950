"""The Celery side of EXECUTOR=celery: the app on Redis, its one task `run_workflow(workflow_id)`,
the executor that sends it, and `python -m core worker`.

The message is only a nudge. Who runs a run is decided in the database (the claim, the run lock
and the heartbeat, core.orchestrator), so a message delivered twice finds the run taken and
returns at once, and a message lost (a worker killed after taking it, Redis restarted empty) is
sent again by recovery, which every worker runs periodically.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery, signals
from kombu.exceptions import OperationalError

from core.config import STEP_TIMEOUT_DEFAULTS_S, Settings, load_settings
from core.errors import ConfigurationError
from core.logs import JsonFormatter, run_context

log = logging.getLogger(__name__)

TASK_NAME = "reelforge.run_workflow"
QUEUE = "reelforge"

# Longer than the longest run can take (every step's default budget, twice). See
# `broker_transport_options` below for why it matters little with early acknowledgement.
VISIBILITY_TIMEOUT_S = int(2 * sum(STEP_TIMEOUT_DEFAULTS_S.values()))

app = Celery("reelforge")


def celery_config(settings: Settings) -> dict[str, Any]:
    """Every setting that changes delivery, set on purpose (Celery 5 names; the reasons cite
    docs/userguide/optimizing.rst, configuration.rst and getting-started/backends-and-brokers/
    redis.rst)."""
    if not settings.broker_url:
        raise ConfigurationError("EXECUTOR=celery needs REDIS_URL (or CELERY_BROKER_URL)")
    return {
        "broker_url": settings.broker_url,
        "task_default_queue": QUEUE,
        "task_serializer": "json",
        "accept_content": ["json"],
        # Early acknowledgement (Celery's default): the message is acked just before the task
        # starts. With late acks, a message not acked within the Redis visibility timeout is
        # "redelivered to another worker" (redis.rst, Caveats), and a worker killed mid-run
        # leaves its message to come back only after that timeout. A 15-minute video would
        # then need a timeout over its whole run to avoid a second start, and a dead worker's
        # runs would wait that long. Here ownership is the database's: the claim plus run lock
        # stop a second start whatever the broker does, and recovery re-sends the run of a dead
        # worker within seconds (its run lock is free), so the message can be acked at once.
        "task_acks_late": False,
        # With early acks the timeout only covers messages a worker reserved but had not
        # started when it died (at most one per slot, see the prefetch below): they come back
        # after it, and recovery has re-sent their runs long before. Kept longer than any run
        # anyway, so turning late acks on could never start a long run twice.
        "broker_transport_options": {"visibility_timeout": VISIBILITY_TIMEOUT_S},
        # optimizing.rst, Prefetch limits: "If you have many expensive tasks with a long
        # duration you would want the multiplier value to be one": a worker busy with videos
        # must not sit on messages an idle worker could start now.
        "worker_prefetch_multiplier": 1,
        # And with early acks the worker would still reserve one more message per slot while
        # its slots run (those are acked already). Celery 5.5+ on Redis can fetch only for a
        # free slot: a run never waits behind a busy worker while another is idle, and a Redis
        # restart finds no reserved message to restore (kombu's restore on a lost connection
        # is where a worker was seen to crash in our restart test).
        "worker_disable_prefetch": True,
        # configuration.rst: this kills the tasks "with late acknowledgment enabled" when the
        # broker connection is lost, because their messages will be redelivered. Ours are acked
        # early and their state is in the database: a Redis blip must not stop runs in flight.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        # Workers may start before Redis (a reboot, a compose file) and must outlive its
        # restarts: keep retrying, at start-up and after, forever.
        "broker_connection_retry_on_startup": True,
        "broker_connection_retry": True,
        "broker_connection_max_retries": None,
        # Nothing reads Celery results: a run's state is in the database. No result backend.
        "task_ignore_result": True,
        "result_backend": None,
        # A run that crashed its worker is not retried by Celery: recovery decides, from the
        # database, whether to resume it.
        "task_reject_on_worker_lost": False,
    }


class CeleryExecutor:
    """Sends each run to the workers. The task id is the workflow id, so a cancel can revoke a
    run still waiting in the broker by its id alone. A Celery app of its own: the sending side
    needs no task code, and two executors on two brokers (tests) do not share a connection."""

    runs_here = False

    def __init__(self, settings: Settings) -> None:
        self._app = Celery("reelforge", set_as_current=False)
        self._app.conf.update(celery_config(settings))

    def bind(self, job: Any) -> None:
        return None  # the workers run their own orchestrator's run_workflow

    def submit(self, workflow_id: str, *, reserved: bool = False) -> None:
        try:
            self._app.send_task(TASK_NAME, args=[workflow_id], task_id=workflow_id, queue=QUEUE)
        except OperationalError as exc:
            # The run is in the database, queued and paid for: recovery sends it again once
            # Redis answers. The user's start must not fail for a lost nudge.
            log.error("Workflow %s - broker unavailable, left for recovery: %s", workflow_id, exc)

    def reserve(self) -> bool:
        return False  # the run goes through the broker to a worker's own runner

    def unreserve(self) -> None:
        return None

    def revoke(self, workflow_id: str) -> None:
        # Workers drop a revoked message when it reaches them; one already running is stopped
        # by the database flag instead (never `terminate=True`: the run must settle its refund).
        self._app.control.revoke(workflow_id)

    def shutdown(self, *, wait: bool = True) -> None:
        return None


# -- inside a worker ----------------------------------------------------------------------------

_runtime_lock = threading.Lock()
_runtime: Any = None  # core.runtime.Runtime, built once per worker process


def worker_runtime() -> Any:
    """This worker process's engine, started on first use: its housekeeping beats the runs it
    holds, lists the worker in the `workers` table and runs recovery."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            from core.runtime import Runtime

            settings = load_settings(executor="celery")
            runtime = Runtime(settings, upgrade=False)
            runtime.orchestrator.listed_as = "celery"
            runtime.start_background()
            _runtime = runtime
        return _runtime


@app.task(name=TASK_NAME, ignore_result=True)
def run_workflow(workflow_id: str) -> None:
    with run_context(workflow_id):
        worker_runtime().orchestrator.run_workflow(workflow_id)


@signals.worker_ready.connect
def _start_engine(**_: Any) -> None:
    worker_runtime()  # recovery and the workers row from the start, not from the first task


@signals.worker_shutting_down.connect
def _stop_runs(**_: Any) -> None:
    """A warm shutdown would wait for every run in flight (minutes of video). Runs stop at their
    next check instead and are released, and another worker's recovery takes them at once."""
    if _runtime is not None:
        _runtime.orchestrator.stopping.set()


@signals.worker_shutdown.connect
def _stop_engine(**_: Any) -> None:
    if _runtime is not None:
        _runtime.shutdown()


def _json_formatters(logger: logging.Logger, **_: Any) -> None:
    """LOG_FORMAT=json: Celery sets up its loggers' handlers itself; give them our formatter."""
    for handler in logger.handlers:
        handler.setFormatter(JsonFormatter())


def run_worker(settings: Settings, *, concurrency: int | None) -> None:
    """`python -m core worker`: consume runs until stopped (Ctrl-C, SIGTERM).

    The pool is threads. Runs mostly wait on providers; the offline provider's encoding is
    PyAV's C code. Measured on this 2-core machine (shared, load average 16-26), 12 runs at
    OFFLINE_LATENCY_S=0 on one worker of concurrency 4: threads 99.1 s, prefork 95.0 s, the same
    within the noise. Threads win on the rest: one process holds one engine (one connection
    pool, one run-lock connection, one housekeeping thread) in about 250 MB, where prefork
    holds one per child (about 200 MB each), and nothing has to be rebuilt after a fork.
    """
    from core import probes
    from core.db import upgrade_schema
    from core.liveness import this_worker_id

    upgrade_schema(settings.resolved_database_url)
    app.conf.update(celery_config(settings))
    logging.getLogger("core").setLevel(logging.INFO)  # a worker's log is its runs' story
    json_logs = settings.log_format == "json"
    if json_logs:
        signals.after_setup_logger.connect(_json_formatters)
        signals.after_setup_task_logger.connect(_json_formatters)
    # Before Celery starts: a supervisor sees the process live from its first seconds.
    stop_probes = probes.serve(settings, settings.metrics_port) if settings.metrics_port else None
    try:
        app.worker_main(
            # --quiet: no start-up banner, which Celery prints outside logging (JSON lines only).
            (["--quiet"] if json_logs else [])
            + [
                "worker",
                "--pool=threads",
                f"--concurrency={concurrency or settings.worker_threads}",
                f"--hostname=reelforge-{this_worker_id().replace(':', '-')}@%h",
                "--loglevel=INFO",
                "--without-mingle",  # workers share nothing worth syncing; start faster
                "--without-gossip",
            ]
        )
    finally:
        if stop_probes is not None:
            stop_probes()
