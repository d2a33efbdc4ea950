"""Runs workflows: claims a run, asks `pipeline.next_action` what to do (it is the only caller),
executes steps (core.step_execution), and records every state change in the database.

One Orchestrator serves a process. Its housekeeping thread beats the heartbeat of the runs it
holds and periodically hands stale runs (a dead process's) back to the executor; a run resumed
that way skips completed steps and reattaches to provider jobs already paid for.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from core import workflows
from core.clock import utcnow
from core.config import Settings
from core.db import Database
from core.errors import InvalidTransitionError, RunnerStoppingError
from core.executor import Executor, ThreadExecutor
from core.pipeline import STEPS, EndRun, NextStep, next_action
from core.providers.base import Providers
from core.states import STEP_ORDER, StepName, StepStatus, WorkflowStatus
from core.step_execution import StepExecution
from core.workflows import WorkflowView

log = logging.getLogger(__name__)


def log_step(workflow_id: str, step: str, status: str, progress: int) -> None:
    """The original system's log line."""
    log.info("Workflow %s - Step %s: %s (%d%%)", workflow_id, step, status, progress)


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
        from outside, the cancel flag, is re-read with every step's completion. The decision
        after a step is taken inside the transaction recording its completion, so the next
        step's start is written with it."""
        action = next_action(view, max_recoveries=self.settings.max_recoveries)
        started = False  # whether the start of `action`'s step is already written
        while True:
            if self.stopping.is_set():
                raise RunnerStoppingError()
            if action is None:
                return view.status
            if isinstance(action, EndRun):
                return self._end(view, action)
            if not started:
                with self.db.begin() as session:
                    view = self._start(session, view, action.step)
            execution = self._execution(view, action.step)
            log_step(view.id, action.step, StepStatus.PROCESSING, execution.last_progress)
            result = execution.run(STEPS[action.step])
            if isinstance(result, EndRun):
                return self._end(view, result, execution)
            with self.db.begin() as session:
                view = self._complete(session, execution, result)
                action = next_action(view, max_recoveries=self.settings.max_recoveries)
                started = isinstance(action, NextStep) and not self.stopping.is_set()
                if started:
                    view = self._start(session, view, action.step)
            log_step(view.id, execution.step.name, StepStatus.COMPLETED, 100)
            if view.status is WorkflowStatus.COMPLETED:
                log.info("Workflow %s: %s", view.id, view.status)

    def _start(self, session: Session, view: WorkflowView, step: StepName) -> WorkflowView:
        """Mark `step` processing. A resumed step keeps its first deadline; a fresh one gets its
        full budget."""
        current = view.step(step)
        budget = timedelta(seconds=self.settings.step_timeout_s(step))
        deadline = current.deadline_at or utcnow() + budget
        workflows.start_step(session, view.id, step, self.runner_id, deadline_at=deadline)
        started = replace(current, status=StepStatus.PROCESSING, deadline_at=deadline)
        return replace(view, steps=tuple(started if s.name == step else s for s in view.steps))

    def _execution(self, view: WorkflowView, step: StepName) -> StepExecution:
        current = view.step(step)
        assert current.deadline_at is not None  # set by _start
        return StepExecution(
            db=self.db,
            providers=self.providers,
            settings=self.settings,
            runner_id=self.runner_id,
            stopping=self.stopping,
            workflow=view,
            step=current,
            deadline=current.deadline_at,
        )

    def _complete(
        self, session: Session, execution: StepExecution, output: dict[str, Any]
    ) -> WorkflowView:
        """The step's buffered records and its completion, the run's completion after the last
        step, and a fresh read of the cancel flag. Returns the run's view after it."""
        view, step = execution.workflow, execution.step.name
        last = step is STEP_ORDER[-1]
        execution.flush(session, final=True)
        workflows.complete_step(session, view.id, step, self.runner_id, output)
        if last:
            workflows.complete_run(session, view.id, self.runner_id)
        done = replace(execution.step, status=StepStatus.COMPLETED, progress=100, output=output)
        return replace(
            view,
            status=WorkflowStatus.COMPLETED if last else view.status,
            cancel_requested=workflows.is_cancel_requested(session, view.id),
            steps=tuple(done if s.name == step else s for s in view.steps),
        )

    def _end(
        self, view: WorkflowView, action: EndRun, execution: StepExecution | None = None
    ) -> WorkflowStatus:
        """End the run as decided, or as a step execution reported (its records go along)."""
        if execution is not None:
            status = StepStatus(action.status.value)
            log_step(view.id, execution.step.name, status, execution.last_progress)
        with self.db.begin() as session:
            if execution is not None:
                execution.flush(session, final=True)
            if action.status is WorkflowStatus.COMPLETED:
                workflows.complete_run(session, view.id, self.runner_id)
            else:
                self._end_run(session, view.id, action)
        if execution is None:
            log.info("Workflow %s: %s", view.id, action.status)
        return action.status

    def _end_run(self, session: Session, workflow_id: str, action: EndRun) -> None:
        if action.provider_cancel_confirmed is not None:
            workflows.record_provider_cancel(
                session, workflow_id, self.runner_id, confirmed=action.provider_cancel_confirmed
            )
        refunded = workflows.end_run(
            session,
            workflow_id,
            self.runner_id,
            action.status,
            message=action.message,
            category=action.category,
        )
        log.info(
            "Workflow %s: %s (%s), refunded %d credits",
            workflow_id,
            action.status,
            action.message,
            refunded,
        )

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
