"""One execution of one step (a StepExecution): it is the StepContext the step function sees
(provider calls with retries and a record of every attempt, throttled progress, cancel and deadline
checks, asset rows), and it turns the way the function ended into the run's outcome.

The orchestrator decides which step runs and records its completion; what an execution needs from
it (the database, its runner id, its stopping event) is passed in explicitly.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)
from tenacity.wait import wait_base

from core import credits, metrics, reuse, telemetry, workflows
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
from core.pipeline import EndRun, StepFunction
from core.progress import VideoJobProgress
from core.providers.base import Providers
from core.run_writes import HeldRun
from core.states import StepName, WorkflowStatus
from core.workflows import ApiCallRecord, StepView, WorkflowView

log = logging.getLogger(__name__)
T = TypeVar("T")


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


class StepExecution:
    """One execution of one step; implements StepContext. A resumed run executes its unfinished
    step again, as a new StepExecution."""

    def __init__(
        self,
        *,
        db: Database,
        held: HeldRun,
        providers: Providers,
        settings: Settings,
        stopping: threading.Event,
        workflow: WorkflowView,
        step: StepView,
        deadline: datetime,
    ) -> None:
        self._db = db
        self._held = held
        self._stopping = stopping
        self.workflow = workflow
        self.step = step
        self.providers = providers
        self.settings = settings
        self._deadline = deadline
        self._calls: list[ApiCallRecord] = []
        self._assets: list[dict[str, Any]] = []
        self._reused_from: str | None = None
        self._pending_progress: tuple[int, str, VideoJobProgress | None] | None = None
        self._last_write = time.monotonic()  # the step's start was just written
        self._cancel_requested = workflow.cancel_requested  # as that write returned it
        self.started = time.monotonic()  # for the step's duration (core.metrics)
        self.last_progress = step.progress

    def run(self, step_function: StepFunction) -> dict[str, Any] | EndRun:
        """The step's output, or how the run ends because of this step. The runner stopping, a
        lost claim and a database failure are not the step's doing: they propagate."""
        try:
            return step_function(self)
        except (RunnerStoppingError, InvalidTransitionError):
            if self._calls:  # what the providers were asked (and may bill) is kept
                self._write_progress()
            raise
        except DBAPIError:
            raise
        except WorkflowCancelledError as exc:
            return EndRun(
                WorkflowStatus.CANCELLED,
                str(exc),
                provider_cancel_confirmed=exc.provider_cancel_confirmed,
            )
        except (ProviderError, StepFailedError, StepTimeoutError) as exc:
            return EndRun(
                WorkflowStatus.FAILED,
                getattr(exc, "message", None) or str(exc) or "step timed out",
                exc.category,
                exc.provider_cancel_confirmed if isinstance(exc, StepStoppedError) else None,
            )
        except Exception:
            log.exception(
                "Workflow %s - Step %s: unexpected error", self.workflow.id, self.step.name
            )
            return EndRun(
                WorkflowStatus.FAILED,
                f"Internal error in step {self.step.name}; the details are in the server log",
                FailureCategory.INTERNAL,
            )

    # -- checks ---------------------------------------------------------------------------

    @property
    def remaining_s(self) -> float:
        return (self._deadline - utcnow()).total_seconds()

    def _check_local(self) -> None:
        if self._stopping.is_set():
            raise RunnerStoppingError()
        if self.remaining_s <= 0:
            budget = self.settings.step_timeout_s(self.step.name)
            raise StepTimeoutError(f"Step {self.step.name} ran past its {budget:.0f} s budget")

    def check(self) -> None:
        """Stopping, the deadline, and the cancel flag: as the step's last write returned it
        when that was within `progress_min_interval_s` (the staleness progress already has),
        else read again."""
        self._check_local()
        if time.monotonic() - self._last_write >= self.settings.progress_min_interval_s:
            self._cancel_requested = self._held.cancel_requested()
        if self._cancel_requested:
            raise WorkflowCancelledError("cancelled by the user")

    def wait(self, seconds: float) -> None:
        self._stopping.wait(max(0.0, min(seconds, self.remaining_s)))
        self._check_local()

    # -- writes ---------------------------------------------------------------------------

    def report(self, progress: int, message: str, detail: VideoJobProgress | None = None) -> None:
        """Throttled: at most one progress write per `progress_min_interval_s`. A report held
        back goes out with a later write once the interval has passed, or is superseded."""
        progress = max(0, min(100, progress))
        self.last_progress = progress
        self._pending_progress = (progress, message, detail)
        log.debug("Workflow %s - Step %s: %s", self.workflow.id, self.step.name, message)
        if time.monotonic() - self._last_write >= self.settings.progress_min_interval_s:
            self._write_progress()

    def _write_progress(self, **step_values: Any) -> None:
        """One write of the step as it now stands (the report held back, if any, and
        `step_values`), with the provider calls buffered so far."""
        if self._pending_progress is not None:
            progress, message, detail = self._pending_progress
            output = self.step.output if detail is None else detail.to_output()
            step_values = {
                "progress": progress,
                "message": message,
                "output": output,
                **step_values,
            }
            self._pending_progress = None
        self.step = replace(self.step, **step_values)
        self._cancel_requested = self._held.progress(self.step, self.take_calls())
        self._last_write = time.monotonic()

    def take_calls(self) -> list[ApiCallRecord]:
        """The provider calls recorded since the last write (they go with the next one)."""
        calls, self._calls = self._calls, []
        return calls

    def take_assets(self) -> list[dict[str, Any]]:
        """The assets stored by the step (they go with its completion)."""
        assets, self._assets = self._assets, []
        return assets

    def record_on_end(self, session: Session) -> None:
        """The step's records, in the transaction that ends the run (failed or cancelled): its
        calls and assets, and the credits of a still it reused."""
        self.release_reused_still(session)
        workflows.record_calls(session, self.take_calls())
        for fields in self.take_assets():
            workflows.add_asset(session, **fields)

    def save_provider_request_id(self, request_id: str) -> None:
        self._write_progress(provider_request_id=request_id)
        telemetry.provider_job(request_id)
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

    def source_still(self, workflow_id: str) -> reuse.StillSource:
        with self._db.read() as session:
            return reuse.source_still(session, workflow_id)

    def mark_still_reused(self, source_id: str) -> None:
        """The step copied run `source_id`'s still: its credits come back before the step's
        completion is written (`release_reused_still`)."""
        self._reused_from = source_id

    def release_reused_still(self, session: Session | None = None) -> int:
        """Give back the credits of the still this step reused, if it did: exactly once (a
        resumed run that reuses it again gives nothing more), and before the step's completion,
        so a crash between the two cannot keep them. Returns the credits given back."""
        if self._reused_from is None:
            return 0
        source, self._reused_from = self._reused_from, None
        if session is not None:
            return credits.release_reused_still(session, self.workflow.id, source_id=source)
        with self._db.begin() as own:
            return credits.release_reused_still(own, self.workflow.id, source_id=source)

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
            number = next(counter)
            with telemetry.call_span(self, operation, provider, number):
                return self._attempt(operation, fn, provider, number, cost_usd)

        # The first attempt goes out on its own, as most calls succeed at once: setting up the
        # retry machinery costs about as much as an instant provider's call. A transient
        # failure of it is handed to tenacity as its attempt 1 (re-raised, not sent again), so
        # the waits, logs and stop are tenacity's from there on.
        try:
            return attempt()
        except TransientProviderError as error:
            if attempts == 1:
                raise
            first_failure: list[TransientProviderError] = [error]

        def replayed_then_attempt() -> T:
            if first_failure:
                raise first_failure.pop()
            return attempt()

        retrying = Retrying(
            stop=stop_after_attempt(attempts),
            wait=wait_retry_after(self.settings),
            retry=retry_if_exception_type(TransientProviderError),
            reraise=True,
            before_sleep=self._before_sleep,
            sleep=self.wait,
        )
        return retrying(replayed_then_attempt)

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
        metrics.call_finished(provider, operation, outcome, attempt, error, started_monotonic=clock)
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
        telemetry.call_recorded(self._calls[-1])

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
