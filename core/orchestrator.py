"""Runs workflows: claims a run, asks `pipeline.next_action` what to do, runs steps, and records
every state change, provider attempt and failure in the database.

One Orchestrator serves a process. Its housekeeping thread beats the heartbeat of the runs it
holds and periodically hands stale runs (a dead process's) back to the executor; a run resumed
that way skips completed steps and reattaches to provider jobs already paid for.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy.exc import DBAPIError
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)
from tenacity.wait import wait_base

from core import workflows
from core.clock import utcnow
from core.config import Settings
from core.db import Database
from core.errors import (
    FailureCategory,
    InvalidTransitionError,
    ProviderError,
    RunnerStoppingError,
    StepFailedError,
    StepStoppedError,
    StepTimeoutError,
    TransientProviderError,
    WorkflowCancelledError,
)
from core.executor import Executor, ThreadExecutor
from core.pipeline import STEPS, EndRun, RunStep, next_action
from core.progress import VideoJobProgress
from core.providers.base import Providers
from core.states import STEP_ORDER, StepName, StepStatus, WorkflowStatus
from core.workflows import ApiCallRecord, StepView, WorkflowView

log = logging.getLogger(__name__)
T = TypeVar("T")


def log_step(workflow_id: str, step: str, status: str, progress: int) -> None:
    """The original system's log line."""
    log.info("Workflow %s - Step %s: %s (%d%%)", workflow_id, step, status, progress)


class wait_retry_after(wait_base):
    """Honour a provider's Retry-After (capped); otherwise back off exponentially with jitter."""

    def __init__(self, settings: Settings) -> None:
        self.cap = settings.retry_max_wait_s
        initial = settings.retry_initial_wait_s
        self.fallback = wait_exponential(multiplier=initial, max=self.cap) + wait_random(0, initial)

    def __call__(self, retry_state: RetryCallState) -> float:
        error = retry_state.outcome.exception() if retry_state.outcome else None
        hinted = getattr(error, "retry_after_s", None)
        if hinted is not None:
            return min(float(hinted), self.cap)
        return min(self.fallback(retry_state), self.cap)


@dataclass(frozen=True)
class RecoveryReport:
    resubmitted: list[str] = field(default_factory=list)


class Orchestrator:
    def __init__(
        self,
        db: Database,
        providers: Providers,
        settings: Settings,
        *,
        executor: Executor | None = None,
    ) -> None:
        self.db = db
        self.providers = providers
        self.settings = settings
        self.executor = executor or ThreadExecutor(settings.worker_threads)
        self.runner_id = f"runner-{uuid.uuid4().hex[:12]}"
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._local: set[str] = set()  # submitted here and not finished yet
        self._active: set[str] = set()  # claimed by this runner right now
        self._housekeeper: threading.Thread | None = None

    # -- entry points ---------------------------------------------------------------------

    def submit(self, workflow_id: str) -> None:
        """Hand a run to the executor (once: a run already waiting here is not queued twice)."""
        with self._lock:
            if workflow_id in self._local or self.stopping.is_set():
                return
            self._local.add(workflow_id)
        self.executor.submit(self.run_workflow, workflow_id)

    def start(self) -> RecoveryReport:
        """Recover what a previous process left behind, then keep heartbeats and recovery going."""
        report = self.recover()
        if self._housekeeper is None:
            self._housekeeper = threading.Thread(
                target=self._housekeeping, name="reelforge-housekeeping", daemon=True
            )
            self._housekeeper.start()
        return report

    def shutdown(self, *, wait: bool = True) -> None:
        """Stop cleanly: runs in flight stop at their next check and are released untouched
        (recovery resumes them on the next start); runs not yet started stay queued."""
        self.stopping.set()
        self.executor.shutdown(wait=wait)
        if self._housekeeper is not None and wait:
            self._housekeeper.join(timeout=5)

    def recover(self) -> RecoveryReport:
        """One recovery pass: resubmit runs whose runner stopped beating (or never started)."""
        stale_before = utcnow() - timedelta(seconds=self.settings.heartbeat_stale_s)
        with self.db.read() as session:
            stale = workflows.stale_runs(session, stale_before=stale_before)
        with self._lock:
            fresh = [wid for wid in stale if wid not in self._local]
        for workflow_id in fresh:
            log.warning("Workflow %s - recovering an interrupted run", workflow_id)
            self.submit(workflow_id)
        return RecoveryReport(resubmitted=fresh)

    def run_workflow(self, workflow_id: str) -> WorkflowStatus | None:
        """Run (or resume) one workflow to its end in this thread. Returns its final status, or
        None when another runner holds it or this runner is stopping."""
        try:
            view = self._claim(workflow_id)
            if view is None:
                return None
            with self._lock:
                self._active.add(workflow_id)
            return self._drive(view)
        except RunnerStoppingError:
            with self.db.begin() as session:
                workflows.release(session, workflow_id, self.runner_id)
            log.info("Workflow %s - released for recovery (runner stopping)", workflow_id)
            return None
        except InvalidTransitionError as exc:
            log.warning("Workflow %s - lost its claim, stopping here: %s", workflow_id, exc)
            return None
        except DBAPIError as exc:
            # Not the run's fault: leave it running; its heartbeat stops, and recovery (here
            # or on another machine) resumes it once the database answers again.
            log.error("Workflow %s - database unavailable, left for recovery: %s", workflow_id, exc)
            return None
        finally:
            with self._lock:
                self._active.discard(workflow_id)
                self._local.discard(workflow_id)

    # -- the run loop ---------------------------------------------------------------------

    def _claim(self, workflow_id: str) -> WorkflowView | None:
        stale_before = utcnow() - timedelta(seconds=self.settings.heartbeat_stale_s)
        with self.db.begin() as session:
            if not workflows.claim(session, workflow_id, self.runner_id, stale_before=stale_before):
                return None
            return workflows.load_workflow(session, workflow_id)

    def _drive(self, view: WorkflowView) -> WorkflowStatus:
        """Step until the run ends. `view` is kept current in memory rather than re-read: this
        runner is its run's only writer (every write is fenced by runner id), and the one write
        from outside, the cancel flag, is re-read with every step's completion."""
        started: StepName | None = None  # started in the previous step's completion transaction
        while True:
            if self.stopping.is_set():
                raise RunnerStoppingError()
            action = next_action(view, max_recoveries=self.settings.max_recoveries)
            if action is None:
                return view.status
            if isinstance(action, EndRun):
                return self._end(view, action)
            view, started = self._run_step(
                view, action.step, already_started=action.step is started
            )

    def _end(self, view: WorkflowView, action: EndRun) -> WorkflowStatus:
        with self.db.begin() as session:
            if action.status is WorkflowStatus.COMPLETED:
                workflows.complete_run(session, view.id, self.runner_id)
            else:
                self._end_run(session, view.id, action.status, action.message, action.category)
        log.info("Workflow %s: %s", view.id, action.status)
        return action.status

    def _end_run(
        self,
        session: Any,
        workflow_id: str,
        status: WorkflowStatus,
        message: str,
        category: FailureCategory | None,
    ) -> None:
        refunded = workflows.end_run(
            session, workflow_id, self.runner_id, status, message=message, category=category
        )
        log.info(
            "Workflow %s: %s (%s), refunded %d credits", workflow_id, status, message, refunded
        )

    def _run_step(
        self, view: WorkflowView, step: StepName, *, already_started: bool
    ) -> tuple[WorkflowView, StepName | None]:
        """Run one step. Returns the run's view after it, and the next step when its start was
        written together with this step's completion."""
        current = view.step(step)
        deadline = self._deadline(current)
        if not already_started:
            with self.db.begin() as session:
                workflows.start_step(session, view.id, step, self.runner_id, deadline_at=deadline)
        log_step(view.id, step, StepStatus.PROCESSING, current.progress)
        context = StepRun(self, view, current, deadline)
        try:
            output = STEPS[step](context)
        except (RunnerStoppingError, InvalidTransitionError):
            context.flush()
            raise
        except DBAPIError:
            raise  # see run_workflow: the database, not the step, failed
        except WorkflowCancelledError as exc:
            return self._fail(context, WorkflowStatus.CANCELLED, str(exc), None, exc), None
        except (ProviderError, StepFailedError, StepTimeoutError) as exc:
            message = getattr(exc, "message", None) or str(exc) or "step timed out"
            return self._fail(context, WorkflowStatus.FAILED, message, exc.category, exc), None
        except Exception:
            log.exception("Workflow %s - Step %s: unexpected error", view.id, step)
            message = f"Internal error in step {step}; the details are in the server log"
            return self._fail(
                context, WorkflowStatus.FAILED, message, FailureCategory.INTERNAL
            ), None
        return self._complete(context, output)

    def _deadline(self, step: StepView) -> datetime:
        """A resumed step keeps its first deadline; a fresh one gets its full budget."""
        budget = timedelta(seconds=self.settings.step_timeout_s(step.name))
        return step.deadline_at or utcnow() + budget

    def _complete(
        self, context: StepRun, output: dict[str, Any]
    ) -> tuple[WorkflowView, StepName | None]:
        """One transaction: the step's buffered records, its completion, the run's completion
        after the last step, a fresh read of the cancel flag, and the next step's start."""
        view, step = context.workflow, context.step.name
        last = step is STEP_ORDER[-1]
        with self.db.begin() as session:
            context.flush(session, final=True)
            workflows.complete_step(session, view.id, step, self.runner_id, output)
            if last:
                workflows.complete_run(session, view.id, self.runner_id)
            done = replace(context.step, status=StepStatus.COMPLETED, progress=100, output=output)
            view = replace(
                view,
                status=WorkflowStatus.COMPLETED if last else view.status,
                cancel_requested=workflows.is_cancel_requested(session, view.id),
                steps=tuple(done if s.name == step else s for s in view.steps),
            )
            view, started = self._start_next(session, view)
        log_step(view.id, step, StepStatus.COMPLETED, 100)
        if last:
            log.info("Workflow %s: %s", view.id, WorkflowStatus.COMPLETED)
        return view, started

    def _start_next(self, session: Any, view: WorkflowView) -> tuple[WorkflowView, StepName | None]:
        action = next_action(view, max_recoveries=self.settings.max_recoveries)
        if not isinstance(action, RunStep) or self.stopping.is_set():
            return view, None
        upcoming = view.step(action.step)
        deadline = self._deadline(upcoming)
        workflows.start_step(session, view.id, upcoming.name, self.runner_id, deadline_at=deadline)
        started = replace(upcoming, status=StepStatus.PROCESSING, deadline_at=deadline)
        steps = tuple(started if s.name == upcoming.name else s for s in view.steps)
        return replace(view, steps=steps), upcoming.name

    def _fail(
        self,
        context: StepRun,
        status: WorkflowStatus,
        message: str,
        category: FailureCategory | None,
        error: Exception | None = None,
    ) -> WorkflowView:
        step, workflow_id = context.step.name, context.workflow.id
        log_step(workflow_id, step, StepStatus(status.value), context.last_progress)
        confirmed = error.provider_cancel_confirmed if isinstance(error, StepStoppedError) else None
        with self.db.begin() as session:
            context.flush(session, final=True)
            if confirmed is not None:
                workflows.record_provider_cancel(
                    session, workflow_id, self.runner_id, confirmed=confirmed
                )
            self._end_run(session, workflow_id, status, message, category)
        return replace(context.workflow, status=status, provider_cancel_confirmed=confirmed)

    # -- housekeeping ---------------------------------------------------------------------

    def _housekeeping(self) -> None:
        next_recovery = time.monotonic() + self.settings.recovery_interval_s
        while not self.stopping.wait(self.settings.heartbeat_interval_s):
            try:
                with self._lock:
                    active = list(self._active)
                with self.db.begin() as session:
                    workflows.heartbeat(session, active, self.runner_id)
                if time.monotonic() >= next_recovery:
                    self.recover()
                    next_recovery = time.monotonic() + self.settings.recovery_interval_s
            except Exception:  # noqa: BLE001 - a database blip must not kill the heartbeat
                log.exception("Housekeeping pass failed; retrying at the next beat")


class StepRun:
    """The StepContext of one step run: what a step function may do, and its bookkeeping."""

    def __init__(
        self, orchestrator: Orchestrator, view: WorkflowView, step: StepView, deadline: datetime
    ) -> None:
        self._orchestrator = orchestrator
        self._db = orchestrator.db
        self._runner_id = orchestrator.runner_id
        self.workflow = view
        self.step = step
        self.providers = orchestrator.providers
        self.settings = orchestrator.settings
        self._deadline = deadline
        self._calls: list[ApiCallRecord] = []
        self._assets: list[dict[str, Any]] = []
        self._pending_progress: tuple[int, str, VideoJobProgress | None] | None = None
        self._last_write = time.monotonic()  # the step's start was just written
        self.last_progress = step.progress

    # -- checks ---------------------------------------------------------------------------

    @property
    def remaining_s(self) -> float:
        return (self._deadline - utcnow()).total_seconds()

    def _check_local(self) -> None:
        if self._orchestrator.stopping.is_set():
            raise RunnerStoppingError()
        if self.remaining_s <= 0:
            budget = self.settings.step_timeout_s(self.step.name)
            raise StepTimeoutError(f"Step {self.step.name} ran past its {budget:.0f} s budget")

    def check(self) -> None:
        self._check_local()
        with self._db.read() as session:
            if workflows.is_cancel_requested(session, self.workflow.id):
                raise WorkflowCancelledError("cancelled by the user")

    def wait(self, seconds: float) -> None:
        self._orchestrator.stopping.wait(max(0.0, min(seconds, self.remaining_s)))
        self._check_local()

    # -- writes ---------------------------------------------------------------------------

    def report(self, progress: int, message: str, detail: VideoJobProgress | None = None) -> None:
        """Throttled: at most one progress write per `progress_min_interval_s`. A report held
        back goes out with a later write once the interval has passed, or is superseded."""
        progress = max(0, min(100, progress))
        self.last_progress = progress
        self._pending_progress = (progress, message, detail)
        log.debug("Workflow %s - Step %s: %s", self.workflow.id, self.step.name, message)
        if self._progress_due():
            with self._db.begin() as session:
                self.flush(session)

    def _progress_due(self) -> bool:
        return time.monotonic() - self._last_write >= self.settings.progress_min_interval_s

    def flush(self, session: Any = None, *, final: bool = False) -> None:
        """Write buffered api_calls, and the held-back progress report when it is due. `final`
        drops that report: the step's last write sets its own progress and message."""
        if final:
            self._pending_progress = None
        if session is None:
            if self._calls or self._assets or self._pending_progress:
                with self._db.begin() as own:
                    self.flush(own)
            return
        workflows.record_calls(session, self._calls)
        self._calls = []
        for fields in self._assets:
            workflows.add_asset(session, **fields)
        self._assets = []
        if self._pending_progress is not None and self._progress_due():
            progress, message, detail = self._pending_progress
            values: dict[str, Any] = {"progress": progress, "message": message}
            if detail is not None:
                values["output"] = detail.to_output()
            self._write(session, **values)
            self._pending_progress = None
            self._last_write = time.monotonic()

    def _write(self, session: Any, **values: Any) -> None:
        """Update this step in place (it stays processing), fenced by our claim."""
        workflows.write_step(
            session,
            self.workflow.id,
            self.step.name,
            StepStatus.PROCESSING,
            self._runner_id,
            **values,
        )

    def save_provider_request_id(self, request_id: str) -> None:
        with self._db.begin() as session:
            self.flush(session)
            self._write(session, provider_request_id=request_id)
        log.info(
            "Workflow %s - Step %s: provider job %s", self.workflow.id, self.step.name, request_id
        )

    def add_asset(self, **fields: Any) -> None:
        """Buffered into the step's completion transaction: a crash before it re-runs the step,
        which uploads again and writes the row then."""
        self._assets.append(
            {
                "workflow_id": self.workflow.id,
                "user_id": self.workflow.user_id,
                "storage_backend": self.providers.storage.name,
                **fields,
            }
        )

    def output_of(self, step: StepName) -> dict[str, Any]:
        return self.workflow.step(step).output

    # -- provider calls -------------------------------------------------------------------

    def call(
        self,
        operation: str,
        fn: Callable[[], T],
        *,
        provider: str,
        cost_usd: Decimal = Decimal(0),
        retry: bool = True,
    ) -> T:
        attempts = self.settings.retry_max_attempts if retry else 1
        counter = iter(range(1, attempts + 1))

        # No check before an attempt: `wait` checks before every retry, and a first attempt must
        # go out even past the deadline when it is the provider cancel for that very deadline.
        def attempt() -> T:
            return self._attempt(operation, fn, provider, next(counter), cost_usd)

        retrying = Retrying(
            stop=stop_after_attempt(attempts),
            wait=wait_retry_after(self.settings),
            retry=retry_if_exception_type(TransientProviderError),
            reraise=True,
            before_sleep=self._before_sleep,
            sleep=self.wait,
        )
        return retrying(attempt)

    def _attempt(
        self, operation: str, fn: Callable[[], T], provider: str, attempt: int, cost: Decimal
    ) -> T:
        started, clock = utcnow(), time.monotonic()
        try:
            result = fn()
        except Exception as exc:
            self._record(operation, provider, attempt, started, clock, exc, Decimal(0))
            raise
        self._record(operation, provider, attempt, started, clock, None, cost)
        return result

    def _record(
        self,
        operation: str,
        provider: str,
        attempt: int,
        started: datetime,
        clock: float,
        error: Exception | None,
        cost: Decimal,
    ) -> None:
        if error is None:
            outcome = "ok"
        elif isinstance(error, TransientProviderError):
            outcome = "transient"
        elif isinstance(error, ProviderError):
            outcome = "permanent"
        else:
            outcome = "error"
        self._calls.append(
            ApiCallRecord(
                workflow_id=self.workflow.id,
                step=self.step.name.value,
                provider=provider,
                operation=operation,
                attempt=attempt,
                started_at=started,
                duration_ms=round((time.monotonic() - clock) * 1000),
                outcome=outcome,
                status_code=getattr(error, "status_code", None),
                error_code=getattr(error, "code", None)
                or (type(error).__name__ if error else None),
                error_message=str(error)[:2000] if error else None,
                cost_usd=cost,
            )
        )

    def _before_sleep(self, retry_state: RetryCallState) -> None:
        error = retry_state.outcome.exception() if retry_state.outcome else None
        wait_s = retry_state.next_action.sleep if retry_state.next_action else 0.0
        log.warning(
            "Workflow %s - Step %s: attempt %d failed (%s), retrying in %.1f s",
            self.workflow.id,
            self.step.name,
            retry_state.attempt_number,
            error,
            wait_s,
        )
        self.report(
            self.last_progress,
            f"provider hiccup ({error}); retry {retry_state.attempt_number} in {wait_s:.0f} s",
        )
