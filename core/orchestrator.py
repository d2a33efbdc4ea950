"""Runs workflows: claims a run, asks `pipeline.next_action` what to do (it is the only caller),
executes steps (core.step_execution), and records every state change in the database.

One Orchestrator serves a process. Its housekeeping thread beats the heartbeat of the runs it
holds and periodically hands stale runs (a dead process's) back to the executor; a run resumed
that way skips completed steps and reattaches to provider jobs already paid for. On Postgres a
dead process's runs are seen at once through their run locks (core.liveness).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from core import liveness, logs, metrics, run_writes, telemetry, webhooks, workflows
from core.clock import utcnow
from core.config import Settings
from core.db import Bound, Database, Statements
from core.errors import InvalidTransitionError, RunnerStoppingError
from core.executor import Executor, ThreadExecutor
from core.pipeline import STEPS, EndRun, NextStep, next_action
from core.providers.base import Providers
from core.run_writes import HeldRun, RunWriter
from core.states import STEP_ORDER, StepName, StepStatus, WorkflowStatus
from core.step_execution import StepExecution
from core.workflows import StepView, WorkflowView

log = logging.getLogger(__name__)


# The runner's connections, at most (twice this with the pool's overflow), however many runs
# it holds: a state change is one statement of about a millisecond, so a few connections serve
# hundreds of runs, and a connection per thread would take 2 x WORKER_THREADS of the server's
# max_connections (100 by default, shared by every process). Past them a write waits its turn.
RUNNER_CONNECTIONS = 8


def _with_step(view: WorkflowView, step: StepView) -> WorkflowView:
    return replace(view, steps=tuple(step if s.name == step.name else s for s in view.steps))


def log_step(workflow_id: str, step: str, status: str, progress: int) -> None:
    """The original system's log line."""
    log.info("Workflow %s - Step %s: %s (%d%%)", workflow_id, step, status, progress)


@dataclass(frozen=True)
class RecoveryReport:
    resubmitted: list[str] = field(default_factory=list)
    # Running runs whose runner was found dead by its free run lock (Postgres), among those.
    taken_over: list[str] = field(default_factory=list)


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
        self.executor.bind(self.run_workflow)
        self.runner_id = f"runner-{uuid.uuid4().hex[:12]}"  # fences writes: one per instance
        self.worker_id = liveness.this_worker_id()  # shown to people: host:pid
        # The `workers` table row this process keeps fresh, as which kind (None: no row; a
        # process that only hands runs to Celery workers is not one).
        self.listed_as: str | None = settings.executor if self.executor.runs_here else None
        self.run_locks = liveness.RunLocks(db)
        self.statements = Statements(
            db.engine.url, pool_size=min(settings.worker_threads, RUNNER_CONNECTIONS)
        )
        self.writer = RunWriter(self.statements)
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._local: set[str] = set()  # submitted here and not finished yet
        self._active: set[str] = set()  # claimed by this runner right now
        self._created: dict[str, WorkflowView] = {}  # submitted with their view, not claimed yet
        # Claimed with their start (claim_at_start), each with a thread of the executor kept
        # for it, not handed to that thread yet.
        self._claimed: dict[str, tuple[WorkflowView, HeldRun]] = {}
        self._housekeeper: threading.Thread | None = None
        self._shut_down = False

    # -- entry points ---------------------------------------------------------------------

    def submit(self, workflow_id: str, created: WorkflowView | None = None) -> None:
        """Hand a run to the executor (once: a run already waiting here is not queued twice).
        `created`: the run as its start just wrote it, which a runner here claims without
        reading it back (the claim's fence checks it is still queued with its steps pending).
        A run claimed with its start goes to the thread kept for it."""
        with self._lock:
            reserved = workflow_id in self._claimed
            if not reserved and (workflow_id in self._local or self.stopping.is_set()):
                return
            if self.executor.runs_here:  # a remote run never comes back through run_workflow
                self._local.add(workflow_id)
                if created is not None and not reserved:
                    self._created[workflow_id] = created
        self.executor.submit(workflow_id, reserved=reserved)

    def claim_at_start(self, view: WorkflowView) -> _ClaimAtStart | None:
        """core.workflows.RunsAtStart: when a thread of the executor is free now, keep it for
        the new run `view` and take the run's lock, so the start can claim the run as it writes
        it (the run must not show as running while it waits for a thread, and recovery must
        not find it running with its lock free)."""
        if self.stopping.is_set() or not self.executor.reserve():
            return None
        if not self.run_locks.acquire(view.id):
            self.executor.unreserve()
            return None
        action = next_action(view, max_recoveries=self.settings.max_recoveries)
        assert isinstance(action, NextStep)  # a new run: its first step
        held = self._hold(view, started_at=utcnow())
        first = self._started(view, action.step)
        change = held.claim_change(
            first, limit=self.settings.max_active_runs_per_user, recoveries=view.recoveries
        )
        return _ClaimAtStart(self, view, first, held, run_writes.claim_of_new_run(change))

    def _settle_claim_at_start(self, offer: _ClaimAtStart, claimed: bool, cancel: bool) -> None:
        if not claimed:
            self.run_locks.release(offer.view.id)
            self.executor.unreserve()
            return
        held = replace(offer.held, first_step_started=True)
        view = self._claimed_view(offer.view, offer.first, held, cancel)
        with self._lock:
            self._claimed[view.id] = (view, held)

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
        (recovery resumes them on the next start); runs not yet started stay queued. Once: the
        process's exit hook may come after an explicit shutdown."""
        if self._shut_down:
            return
        self._shut_down = True
        self.stopping.set()
        self.executor.shutdown(wait=wait)
        if self._housekeeper is not None and wait:
            self._housekeeper.join(timeout=5)
        self.run_locks.close()
        self.statements.dispose()
        if self.listed_as is not None:
            try:
                with self.db.begin() as session:
                    liveness.leave(session, self.worker_id)
            except DBAPIError:
                log.warning("Worker %s - could not remove its row on shutdown", self.worker_id)

    def recover(self, *, wait_turn: bool = False, all_queued: bool = False) -> RecoveryReport:
        """One recovery pass (one process at a time): runs whose runner is dead (its run lock
        free, on Postgres) are released at once, then every run whose runner stopped beating,
        or that was queued long ago (or any queued one, with `all_queued`), is resubmitted.
        Without `wait_turn` the pass is skipped while another process is in its own."""
        with liveness.recovery_turn(self.db, wait=wait_turn) as my_turn:
            if not my_turn:
                return RecoveryReport()
            taken_over = self._release_dead_runners()
            now = utcnow()
            stale_before = now - timedelta(seconds=self.settings.heartbeat_stale_s)
            with self.db.read() as session:
                stale = workflows.stale_runs(
                    session, stale_before=stale_before, queued_before=now if all_queued else None
                )
            with self._lock:
                fresh = [wid for wid in stale if wid not in self._local]
            for workflow_id in fresh:
                log.warning("Workflow %s - recovering an interrupted run", workflow_id)
                self.submit(workflow_id)
            with self.db.begin() as session:
                liveness.mark_nudged(session, fresh)
        return RecoveryReport(
            resubmitted=fresh, taken_over=[wid for wid in taken_over if wid in fresh]
        )

    def _release_dead_runners(self) -> list[str]:
        """Give back the running runs whose run lock nobody holds (their process died), so the
        stale-run pass below picks them up without waiting for their heartbeat to age."""
        if not self.run_locks.enabled:
            return []  # no locks to ask (SQLite): the heartbeat alone tells
        with self.db.read() as session:
            held = [r for r in liveness.running_runs(session) if r.runner_id is not None]
        with self._lock:
            others = [r for r in held if r.workflow_id not in self._active]
        dead = set(liveness.unheld(self.db, [r.workflow_id for r in others]))
        released = []
        for run in others:
            if run.workflow_id in dead and run.runner_id is not None:
                with self.db.begin() as session:
                    workflows.release(session, run.workflow_id, run.runner_id)
                log.warning(
                    "Workflow %s - runner %s (%s) is gone, taking its run over",
                    run.workflow_id,
                    run.worker_id,
                    run.runner_id,
                )
                released.append(run.workflow_id)
        return released

    def run_workflow(self, workflow_id: str) -> WorkflowStatus | None:
        """Run (or resume) one workflow to its end in this thread. Returns its final status, or
        None when another runner holds it or this runner is stopping."""
        with self._lock:
            claimed = self._claimed.pop(workflow_id, None)
        locked = claimed is not None  # claimed with its start, its lock taken then
        try:
            if claimed is None:
                # Before the claim: a process holding the lock is running the run (this may be
                # a duplicate delivery of its message), and recovery sees a free lock as a dead
                # runner.
                locked = self.run_locks.acquire(workflow_id)
                if not locked:
                    log.info("Workflow %s - already running elsewhere", workflow_id)
                    return None
                claimed = self._claim(workflow_id)
            if claimed is None:
                log.info(
                    "Workflow %s - not claimed: held, ended, or its user's slots full", workflow_id
                )
                return None
            view, held = claimed
            with self._lock:
                self._active.add(workflow_id)
            status = telemetry.traced_run(view, lambda: self._drive(view, held))
            self._nudge_waiting(view.user_id)
            return status
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
                self._created.pop(workflow_id, None)
            if locked:
                self.run_locks.release(workflow_id)  # after the run's last write

    def _nudge_waiting(self, user_id: int) -> None:
        """A slot of the user's just freed: hand their oldest waiting run to the executor. Past
        the submit dedup on purpose: that run may be on its way out of a refused claim here."""
        waiting = self.statements.run(lambda c: liveness.next_waiting(c, user_id))
        if waiting is not None and not self.stopping.is_set():
            self.executor.submit(waiting)

    # -- the run loop ---------------------------------------------------------------------

    def _claim(self, workflow_id: str) -> tuple[WorkflowView, HeldRun] | None:
        """Take the run: a queued one with its first step started in the same write, or a
        running one whose runner stopped beating (a takeover, which starts nothing yet)."""
        with self._lock:
            view = self._created.pop(workflow_id, None)
        if view is None:
            view = self.statements.run(lambda c: workflows.read_workflow(c, workflow_id))
        if view is None or view.status.is_terminal:
            return None
        action = next_action(view, max_recoveries=self.settings.max_recoveries)
        if view.status is not WorkflowStatus.QUEUED or not isinstance(action, NextStep):
            return self._take_over(workflow_id)
        held = self._hold(view, started_at=utcnow())
        first = self._started(view, action.step)
        cancel = held.claim(
            first, limit=self.settings.max_active_runs_per_user, recoveries=view.recoveries
        )
        if cancel is None:
            return None
        held = replace(held, first_step_started=True)
        return self._claimed_view(view, first, held, cancel), held

    def _claimed_view(
        self, view: WorkflowView, first: StepView, held: HeldRun, cancel: bool
    ) -> WorkflowView:
        """The queued run `view` as its claim left it."""
        return replace(
            _with_step(view, first),
            status=WorkflowStatus.RUNNING,
            runner_id=self.runner_id,
            worker_id=self.worker_id,
            started_at=held.started_at,
            cancel_requested=cancel,
        )

    def _take_over(self, workflow_id: str) -> tuple[WorkflowView, HeldRun] | None:
        stale_before = utcnow() - timedelta(seconds=self.settings.heartbeat_stale_s)
        with self.db.begin() as session:
            claimed = workflows.claim(
                session,
                workflow_id,
                self.runner_id,
                stale_before=stale_before,
                worker_id=self.worker_id,
                max_active_per_user=self.settings.max_active_runs_per_user,
            )
            if not claimed:
                return None
            view = workflows.load_workflow(session, workflow_id)
        return view, self._hold(view, started_at=view.started_at)

    def _hold(self, view: WorkflowView, *, started_at: datetime | None) -> HeldRun:
        return HeldRun(
            writer=self.writer,
            workflow_id=view.id,
            user_id=view.user_id,
            runner_id=self.runner_id,
            worker_id=self.worker_id,
            started_at=started_at,
            destinations=webhooks.destinations_of(view.request, view.global_webhook_url),
        )

    def _drive(self, view: WorkflowView, held: HeldRun) -> WorkflowStatus:
        """Step until the run ends. `view` is kept current in memory rather than re-read: this
        runner is its run's only writer (every write is fenced by runner id), and the one write
        from outside, the cancel flag, comes back with every write. A step's completion, the
        next step's start (or the run's completion) and the step's records are one write; when
        that write finds the cancel flag up, the step it just started ends cancelled."""
        action = next_action(view, max_recoveries=self.settings.max_recoveries)
        started = held.first_step_started  # whether `action`'s step start is already written
        while True:
            if self.stopping.is_set():
                raise RunnerStoppingError()
            if action is None:
                return view.status
            if isinstance(action, EndRun):
                return self._end(view, action)
            if not started:
                step = self._started(view, action.step)
                cancel = held.advance([step])
                view = replace(_with_step(view, step), cancel_requested=cancel)
            execution = self._execution(view, action.step, held)
            log_step(view.id, action.step, StepStatus.PROCESSING, execution.last_progress)
            result = telemetry.traced_step(execution, STEPS[action.step])
            if isinstance(result, EndRun):
                return self._end(view, result, execution)
            view, started = self._complete(view, execution, result, held)
            action = next_action(view, max_recoveries=self.settings.max_recoveries)
            log_step(view.id, execution.step.name, StepStatus.COMPLETED, 100)
            if view.status is WorkflowStatus.COMPLETED:
                log.info("Workflow %s: %s", view.id, view.status)

    def _started(self, view: WorkflowView, step: StepName) -> StepView:
        now = utcnow()
        budget = timedelta(seconds=self.settings.step_timeout_s(step))
        return run_writes.started(
            view.step(step), now=now, deadline_at=now + budget, worker_id=self.worker_id
        )

    def _execution(self, view: WorkflowView, step: StepName, held: HeldRun) -> StepExecution:
        current = view.step(step)
        assert current.deadline_at is not None  # set by _started
        logs.set_step(step)
        return StepExecution(
            db=self.db,
            held=held,
            providers=self.providers,
            settings=self.settings,
            stopping=self.stopping,
            workflow=view,
            step=current,
            deadline=current.deadline_at,
        )

    def _complete(
        self, view: WorkflowView, execution: StepExecution, output: dict[str, Any], held: HeldRun
    ) -> tuple[WorkflowView, bool]:
        """Write the step's completion with its records, and with it the next step's start or,
        after the last step, the run's completion. Returns the run's view after it, and whether
        a next step was started."""
        released = execution.release_reused_still()
        done = run_writes.completed(execution.step, output, now=utcnow())
        view = replace(_with_step(view, done), cost_credits=view.cost_credits - released)
        last = done.name is STEP_ORDER[-1]
        following = None if last else next_action(view, max_recoveries=self.settings.max_recoveries)
        steps = [done]
        if isinstance(following, NextStep) and not self.stopping.is_set():
            steps.append(self._started(view, following.step))
            view = _with_step(view, steps[-1])
        cancel = held.advance(
            steps,
            calls=execution.take_calls(),
            assets=execution.take_assets(),
            completed=view if last else None,
        )
        metrics.step_observed(done.name, StepStatus.COMPLETED, execution.started)
        if last:
            metrics.run_observed(view.request.video_model, WorkflowStatus.COMPLETED)
        status = WorkflowStatus.COMPLETED if last else view.status
        return replace(view, status=status, cancel_requested=cancel), len(steps) > 1

    def _end(
        self, view: WorkflowView, action: EndRun, execution: StepExecution | None = None
    ) -> WorkflowStatus:
        """End the run as decided, or as a step execution reported (its records go along)."""
        if execution is not None:
            status = StepStatus(action.status.value)
            log_step(view.id, execution.step.name, status, execution.last_progress)
        with self.db.begin() as session:
            if execution is not None:
                execution.record_on_end(session)
                metrics.step_finished(session, execution.step.name, status, execution.started)
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
                self.run_locks.keep()
                with self.db.begin() as session:
                    workflows.heartbeat(session, active, self.runner_id)
                    if self.listed_as is not None:
                        liveness.beat(
                            session, self.worker_id, kind=self.listed_as, runs_in_hand=len(active)
                        )
                if time.monotonic() >= next_recovery:
                    self.recover()
                    next_recovery = time.monotonic() + self.settings.recovery_interval_s
            except Exception:  # noqa: BLE001 - a database blip must not kill the heartbeat
                log.exception("Housekeeping pass failed; retrying at the next beat")


@dataclass
class _ClaimAtStart:
    """core.workflows.ClaimOffer: a runner's claim of a new run, the thread and lock kept for
    it until the start's round trip says whether it holds."""

    orchestrator: Orchestrator
    view: WorkflowView
    first: StepView
    held: HeldRun
    statement: Bound

    def settle(self, row: Row[Any] | None) -> bool:
        outcome = None if row is None else run_writes.applied(row)
        claimed = outcome is not None and outcome.written
        cancel = outcome is not None and outcome.cancel_requested
        self.orchestrator._settle_claim_at_start(self, claimed, cancel)
        return claimed
