"""Prometheus metrics (prometheus-client): what the engine counts as it goes, what the database
holds (read at scrape time), and the registry the API and the workers expose.

Counts of what the database records (runs started and ended, steps, refunds, credits) move only
when the transaction recording them commits: a hook registers the increment on the session and
an `after_commit` listener applies it, so a transaction that rolls back counts nothing. Provider
calls count at once: the call went out, whatever our transaction does afterwards.

Processes: by default each process keeps its own values and is its own scrape target (the API on
its port, each worker on its METRICS_PORT); Prometheus adds targets up. A server that forks
several processes behind one port (gunicorn with uvicorn workers) must run with
PROMETHEUS_MULTIPROC_DIR set, as prometheus-client's multiprocess mode asks: every process then
writes its values to files there and each scrape adds them all up, whichever process answers.
The database's values (queued, running, workers, deliveries) come from a query at scrape time in
both modes, never from a process's memory, so every target reports the same numbers: aggregate
them with max(), not sum().
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import timedelta

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import event, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from core.clock import utcnow
from core.db import Database
from core.models import WebhookDelivery, WorkerBeat, Workflow
from core.states import WorkflowStatus

log = logging.getLogger(__name__)

# Steps run from milliseconds (validate) to many minutes (a video); provider calls likewise.
_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 900, 1800)
# The kinds a worker row can be (Settings.executor); listed even at zero so an alert can fire.
WORKER_KINDS = ("threads", "celery")
_IN_FLIGHT = (WorkflowStatus.QUEUED.value, WorkflowStatus.RUNNING.value)

RUNS_STARTED = Counter(
    "reelforge_runs_started", "Runs created with their credits reserved, by video model.", ["model"]
)
RUNS_FINISHED = Counter(
    "reelforge_runs_finished",
    "Runs that ended, by video model and final status (completed, failed, cancelled).",
    ["model", "status"],
)
STEP_DURATION = Histogram(
    "reelforge_step_duration_seconds",
    "How long one execution of a step took, by step and how it ended.",
    ["step", "outcome"],
    buckets=_DURATION_BUCKETS,
)
PROVIDER_CALL_DURATION = Histogram(
    "reelforge_provider_call_duration_seconds",
    "One provider call attempt, by provider, operation and outcome (ok, transient, permanent, "
    "error).",
    ["provider", "operation", "outcome"],
    buckets=_DURATION_BUCKETS,
)
PROVIDER_ERRORS = Counter(
    "reelforge_provider_errors",
    "Failed provider call attempts, by provider, operation and failure category.",
    ["provider", "operation", "category"],
)
PROVIDER_RETRIES = Counter(
    "reelforge_provider_retries",
    "Provider call attempts after the first (retries), by provider and operation.",
    ["provider", "operation"],
)
REFUNDS = Counter("reelforge_refunds", "Failed or cancelled runs whose credits were refunded.")
CREDITS_SPENT = Counter("reelforge_credits_spent", "Credits reserved by runs at their start.")
CREDITS_REFUNDED = Counter(
    "reelforge_credits_refunded",
    "Credits given back: a failed or cancelled run's refund, or a reused still's share.",
    ["reason"],
)
SSE_STREAMS = Gauge(
    "reelforge_sse_streams_open",
    "Run event streams (Server-Sent Events) open on this API.",
    multiprocess_mode="livesum",
)

# -- counting after commit ---------------------------------------------------------------------

_PENDING = "reelforge_metrics_pending"


def on_commit(session: Session, apply: Callable[[], None]) -> None:
    """Run `apply` once `session`'s transaction commits; never if it rolls back."""
    session.info.setdefault(_PENDING, []).append(apply)


@event.listens_for(Session, "after_commit")
def _apply_pending(session: Session) -> None:
    for apply in session.info.pop(_PENDING, ()):
        apply()


@event.listens_for(Session, "after_rollback")
def _drop_pending(session: Session) -> None:
    session.info.pop(_PENDING, None)


# -- hooks: one call where the engine knows the outcome -----------------------------------------


def run_started(session: Session, model: str | None) -> None:
    on_commit(session, RUNS_STARTED.labels(model=_model_label(model)).inc)


def start_observed(model: str | None, credits: int) -> None:
    """A run's start, already committed (one statement: core.run_start)."""
    RUNS_STARTED.labels(model=_model_label(model)).inc()
    CREDITS_SPENT.inc(credits)


def run_finished(session: Session, workflow_id: str) -> None:
    """Call after the run's final status is written in `session`: it is read back from there."""
    row = session.execute(
        select(Workflow.status, Workflow.video_model).where(Workflow.id == workflow_id)
    ).one()
    on_commit(session, lambda: run_observed(row.video_model, row.status))


def run_observed(model: str | None, status: str) -> None:
    """A run's end, already committed (a runner's one-statement write: core.run_writes)."""
    RUNS_FINISHED.labels(model=_model_label(model), status=str(status)).inc()


def _model_label(model: str | None) -> str:
    """A request naming no video model gets the installation's VIDEO_MODEL: "default". (The
    names a request can give are the registry's, a short list: a bounded label.)"""
    return model or "default"


def step_finished(session: Session, step: str, outcome: str, started_monotonic: float) -> None:
    seconds = time.monotonic() - started_monotonic
    child = STEP_DURATION.labels(step=step, outcome=outcome)
    on_commit(session, lambda: child.observe(seconds))


def step_observed(step: str, outcome: str, started_monotonic: float) -> None:
    """A step's end, already committed (a runner's one-statement write: core.run_writes)."""
    STEP_DURATION.labels(step=step, outcome=outcome).observe(time.monotonic() - started_monotonic)


def call_finished(
    provider: str,
    operation: str,
    outcome: str,
    attempt: int,
    error: Exception | None,
    *,
    started_monotonic: float,
) -> None:
    """One provider call attempt, counted at once."""
    seconds = time.monotonic() - started_monotonic
    PROVIDER_CALL_DURATION.labels(provider, operation, outcome).observe(seconds)
    if attempt > 1:
        PROVIDER_RETRIES.labels(provider, operation).inc()
    if error is not None:
        category = getattr(error, "category", None) or "internal"
        PROVIDER_ERRORS.labels(provider, operation, str(category)).inc()


def credits_reserved(session: Session, amount: int) -> None:
    on_commit(session, lambda: CREDITS_SPENT.inc(amount))


def credits_refunded(session: Session, amount: int) -> None:
    """A failed or cancelled run's refund."""

    def apply() -> None:
        REFUNDS.inc()
        CREDITS_REFUNDED.labels(reason="refund").inc(amount)

    on_commit(session, apply)


def credits_released(session: Session, amount: int) -> None:
    """A reused still's share of a reservation, given back."""
    on_commit(session, lambda: CREDITS_REFUNDED.labels(reason="reused_still").inc(amount))


@contextmanager
def sse_stream_open() -> Iterator[None]:
    SSE_STREAMS.inc()
    try:
        yield
    finally:
        SSE_STREAMS.dec()


# -- read at scrape time ------------------------------------------------------------------------


class DatabaseCollector(Collector):
    """Runs queued and running, the oldest queued run's age, live workers by kind and webhook
    deliveries pending: a few indexed counts per scrape. A database that does not answer leaves
    these out of the scrape (readiness says why) rather than failing it."""

    def __init__(self, db: Database, *, worker_stale_s: float) -> None:
        self._db = db
        self._worker_stale_s = worker_stale_s

    def describe(self) -> Iterable[Metric]:
        return []  # no query when the registry registers this collector

    def collect(self) -> Iterable[Metric]:
        try:
            with self._db.read() as session:
                return list(self._gauges(session))
        except SQLAlchemyError as exc:
            log.warning("Metrics - database not readable at scrape: %s", exc)
            return []

    def _gauges(self, session: Session) -> Iterator[Metric]:
        now = utcnow()
        counts = {
            status: (count, oldest)
            for status, count, oldest in session.execute(
                select(Workflow.status, func.count(), func.min(Workflow.created_at))
                .where(Workflow.status.in_(_IN_FLIGHT))
                .group_by(Workflow.status)
            )
        }
        queued, oldest = counts.get(WorkflowStatus.QUEUED.value, (0, None))
        yield GaugeMetricFamily("reelforge_runs_queued", "Runs waiting to start.", value=queued)
        yield GaugeMetricFamily(
            "reelforge_runs_running",
            "Runs in progress.",
            value=counts.get(WorkflowStatus.RUNNING.value, (0, None))[0],
        )
        yield GaugeMetricFamily(
            "reelforge_oldest_queued_run_age_seconds",
            "How long the oldest queued run has waited (0 with none queued).",
            value=(now - oldest).total_seconds() if oldest else 0.0,
        )
        alive = dict.fromkeys(WORKER_KINDS, 0)
        seen_after = now - timedelta(seconds=self._worker_stale_s)
        for kind, count in session.execute(
            select(WorkerBeat.kind, func.count())
            .where(WorkerBeat.last_seen_at >= seen_after)
            .group_by(WorkerBeat.kind)
        ):
            alive[kind] = count
        workers = GaugeMetricFamily(
            "reelforge_workers_alive",
            "Processes running runs whose heartbeat is fresh, by kind (celery, threads).",
            labels=["kind"],
        )
        for kind, count in alive.items():
            workers.add_metric([kind], count)
        yield workers
        pending = session.execute(
            select(func.count()).where(WebhookDelivery.status == "pending")
        ).scalar_one()
        yield GaugeMetricFamily(
            "reelforge_webhook_deliveries_pending",
            "Webhook deliveries waiting for their first or next attempt.",
            value=pending,
        )


class _ThisProcess(Collector):
    """The process's own metrics (the default registry) inside an exposition registry."""

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


def exposition(db: Database, *, worker_stale_s: float) -> CollectorRegistry:
    """What `/metrics` serves: this process's metrics (every process's, in multiprocess mode)
    and the database's gauges."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)
    else:
        registry.register(_ThisProcess())
    registry.register(DatabaseCollector(db, worker_stale_s=worker_stale_s))
    return registry
