"""A load run (`make load`, the original system's `test:load`): N concurrent workflows on the
fault-injecting offline providers, then the figures and every invariant checked.

The runs are real: real rows, real retries and refunds, real images and MP4s (small ones, so the
machine's two cores measure the engine rather than the encoder).

With EXECUTOR=celery the runs go through Redis to `workers` worker processes this run starts
(and stops) itself, each running `concurrency` runs at once.
"""

from __future__ import annotations

import math
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy import func, select

from core import credits, workflows
from core.auth import create_user
from core.config import Settings
from core.models import ApiCall, CreditTransaction, Workflow
from core.runtime import Runtime
from core.schemas import parse_request
from core.states import STEP_ORDER, StepStatus
from core.workflows import WorkflowView

PAYLOAD = {
    "imagePrompt": "load test scene",
    "videoPrompt": "slow pan across the scene",
    "imageConfig": {"size": "1024x1024"},
    "videoConfig": {"duration": "4s", "generateAudio": False},
}


@dataclass(frozen=True)
class LoadReport:
    workflows: int
    wall_s: float
    # The wall time with perfect packing: the longest run, or all runs' time over the slots
    # (runs at once across the workers), whichever is longer.
    critical_path_s: float
    slots: int
    claim_p50_s: float  # from submit (the run's creation) to a runner claiming it
    claim_p95_s: float
    outcomes: dict[str, int]
    step_p50_s: dict[str, float]
    step_p95_s: dict[str, float]
    retried_calls: int
    refunds: int
    refunded_credits: int
    peak_memory_mb: float
    broken: list[str] = field(default_factory=list)  # invariant violations; empty when sound

    @property
    def throughput_per_min(self) -> float:
        return 60 * self.workflows / self.wall_s if self.wall_s else 0.0


def load_settings(base: Settings, workflows_count: int) -> Settings:
    """The load profile: every run in flight at once, 20% transient and 2% permanent faults.
    An OFFLINE_LATENCY_S or WORKER_THREADS set in the environment is kept."""
    chosen = base.model_fields_set
    return base.model_copy(
        update={
            "worker_threads": base.worker_threads
            if "worker_threads" in chosen
            else min(workflows_count, 256),
            "max_active_runs_per_user": workflows_count,  # one user starts them all
            "offline_latency_s": base.offline_latency_s if "offline_latency_s" in chosen else 0.2,
            "fault_latency_s": 0.05,
            "fault_transient_rate": 0.2,
            "fault_permanent_rate": 0.02,
            "fault_seed": base.fault_seed if base.fault_seed is not None else 7,
            "retry_initial_wait_s": 0.05,
            "retry_max_wait_s": 0.5,
            "poll_interval_s": 0.2,
        }
    )


def run_load(
    settings: Settings, count: int, *, workers: int = 1, timeout_s: float = 1800
) -> LoadReport:
    profile = load_settings(settings, count)
    celery = profile.executor == "celery"
    slots = profile.worker_threads * (workers if celery else 1)
    with _workers(profile, workers if celery else 0):
        runtime = Runtime(profile)
        try:
            started = time.monotonic()
            ids = _start_all(runtime, count)
            _wait_until_done(runtime, ids, timeout_s)
            wall = time.monotonic() - started
            with runtime.db.read() as session:
                views = [workflows.load_workflow(session, wid) for wid in ids]
                return _report(session, views, wall, slots)
        finally:
            runtime.shutdown()


# The settings the load profile changes, handed to the worker processes it starts.
_PROFILE_ENV = (
    "worker_threads",
    "max_active_runs_per_user",
    "offline_latency_s",
    "fault_latency_s",
    "fault_transient_rate",
    "fault_permanent_rate",
    "fault_seed",
    "retry_initial_wait_s",
    "retry_max_wait_s",
    "poll_interval_s",
)


@contextmanager
def _workers(profile: Settings, count: int) -> Iterator[None]:
    """`count` Celery workers (`python -m core worker`) on the profile's settings, stopped
    at the end."""
    env = {**os.environ, "EXECUTOR": "celery", "DATABASE_URL": profile.resolved_database_url}
    env["DATA_DIR"] = str(profile.data_dir)
    env.update({name.upper(): str(getattr(profile, name)) for name in _PROFILE_ENV})
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "core", "worker"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(count)
    ]
    try:
        yield
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def _start_all(runtime: Runtime, count: int) -> list[str]:
    with runtime.db.begin() as session:
        user = create_user(
            session, f"load-{uuid.uuid4().hex[:8]}@example.com", starting_credits=100 * count
        )
    request = parse_request(PAYLOAD)
    return [runtime.start_workflow(user, request)[0] for _ in range(count)]


def _wait_until_done(runtime: Runtime, ids: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with runtime.db.read() as session:
            active = session.scalar(
                select(func.count())
                .select_from(Workflow)
                .where(Workflow.id.in_(ids), Workflow.status.in_(("queued", "running")))
            )
        if not active:
            return
        time.sleep(0.5)
    raise TimeoutError(f"load run still had {active} workflows in flight after {timeout_s} s")


def _report(session, views: list[WorkflowView], wall_s: float, slots: int) -> LoadReport:
    ids = [v.id for v in views]
    durations = {
        step: [s.duration_s for v in views if (s := v.step(step)).finished_at and s.duration_s]
        for step in STEP_ORDER
    }
    refunds = Counter(
        session.scalars(
            select(CreditTransaction.workflow_id).where(
                CreditTransaction.kind == "refund", CreditTransaction.workflow_id.in_(ids)
            )
        )
    )
    refunded = session.scalar(
        select(func.coalesce(func.sum(CreditTransaction.amount), 0)).where(
            CreditTransaction.kind == "refund", CreditTransaction.workflow_id.in_(ids)
        )
    )
    retried = session.scalar(
        select(func.count())
        .select_from(ApiCall)
        .where(ApiCall.workflow_id.in_(ids), ApiCall.attempt > 1)
    )
    runs_s = [v.duration_s or 0.0 for v in views]
    claims_s = [(v.started_at - v.created_at).total_seconds() for v in views if v.started_at]
    rounds = math.ceil(len(views) / slots)  # whole runs per slot: packing can do no better
    return LoadReport(
        workflows=len(views),
        wall_s=wall_s,
        critical_path_s=max(max(runs_s), rounds * statistics.median(runs_s)),
        slots=slots,
        claim_p50_s=_percentile(claims_s, 50),
        claim_p95_s=_percentile(claims_s, 95),
        outcomes=dict(Counter(v.status.value for v in views)),
        step_p50_s={s: _percentile(d, 50) for s, d in durations.items()},
        step_p95_s={s: _percentile(d, 95) for s, d in durations.items()},
        retried_calls=retried,
        refunds=sum(refunds.values()),
        refunded_credits=refunded,
        peak_memory_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        broken=_broken_invariants(session, views, refunds),
    )


def _broken_invariants(session, views: list[WorkflowView], refunds: Counter) -> list[str]:
    broken = [
        f"user {user}: balance {cached} but ledger says {ledger}"
        for user, cached, ledger in credits.balance_mismatches(session)
    ]
    for view in views:
        expected = 0 if view.status.value == "completed" else 1
        if view.status.is_active:
            broken.append(f"{view.id} never ended ({view.status})")
        if refunds[view.id] != expected:
            broken.append(f"{view.id} {view.status} has {refunds[view.id]} refunds")
        if any(s.status is StepStatus.PROCESSING for s in view.steps):
            broken.append(f"{view.id} left a step processing")
    return broken


def _percentile(values: list[float], pct: int) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]
