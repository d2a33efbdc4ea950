"""One process's engine: settings, database, providers and orchestrator wired together.

The Streamlit app caches one Runtime per process (st.cache_resource); the CLI builds its own.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core import credits, liveness, reuse, telemetry, webhooks, workflows
from core.alert_mail import AlertMailer
from core.auth import UserView
from core.config import Settings
from core.db import Database, upgrade_schema
from core.errors import ProviderError
from core.executor import Executor, ThreadExecutor
from core.orchestrator import Orchestrator
from core.providers import build_providers
from core.providers.base import Providers
from core.schemas import WorkflowRequest
from core.webhook_sender import WebhookSender
from core.workflows import StillChoice, WorkflowView

log = logging.getLogger(__name__)


def _before_thread_join(stop: Callable[[], None]) -> None:
    """Run `stop` when the process exits, before Python joins worker threads.

    A plain atexit handler runs only after that join, so the process would wait for every video
    in flight (minutes) before stopping them. CPython's threading hook runs first (it is how
    concurrent.futures itself shuts down); runners then stop at their next check and release
    their runs to recovery.
    """
    register = getattr(threading, "_register_atexit", None)
    (register or atexit.register)(stop)


def build_executor(settings: Settings) -> Executor:
    """EXECUTOR=threads: this process's pool; EXECUTOR=celery: the workers, through Redis."""
    if settings.executor == "celery":
        from core.worker import CeleryExecutor  # Celery is imported only when chosen

        return CeleryExecutor(settings)
    return ThreadExecutor(settings.worker_threads)


@dataclass(frozen=True)
class RecoveredRun:
    workflow_id: str
    status: str
    error_message: str | None
    refunded: int


def _recovered(session: Any, workflow_id: str) -> RecoveredRun:
    view = workflows.load_workflow(session, workflow_id)
    refund = credits.refund_entry(session, workflow_id)
    return RecoveredRun(
        workflow_id, view.status.value, view.error_message, refund.amount if refund else 0
    )


class Runtime:
    def __init__(
        self,
        settings: Settings,
        *,
        upgrade: bool = True,
        executor: Executor | None = None,
        providers: Providers | None = None,
    ) -> None:
        url = settings.resolved_database_url
        if upgrade:
            upgrade_schema(url)
        self.settings = settings
        self.providers = providers or build_providers(settings)  # may refuse the settings
        self.db = Database.from_url(url)
        self.orchestrator = Orchestrator(
            self.db, self.providers, settings, executor=executor or build_executor(settings)
        )
        telemetry.instrument_database(
            self.db.engine, self.db.statements.engine, self.orchestrator.statements.engine
        )
        self.mailer = (
            None
            if settings.smtp_url is None
            else AlertMailer(
                self.db,
                settings.smtp_url.get_secret_value(),
                sender=settings.alert_email_from,
                interval_s=settings.alert_email_interval_s,
            )
        )
        self.webhooks = WebhookSender(self.db, settings)

    def start_background(self) -> None:
        """Resume what a previous process left behind and start heartbeats and recovery."""
        _before_thread_join(self.orchestrator.shutdown)
        report = self.orchestrator.start()
        if self.mailer is not None:
            self.mailer.start()
        self.webhooks.start()
        if report.resubmitted:
            log.info("Recovery resubmitted %d interrupted runs", len(report.resubmitted))

    def start_workflow(
        self,
        user: UserView,
        request: WorkflowRequest,
        *,
        client_key: str | None = None,
        reuse_still: bool = False,
        idempotency_key: str | None = None,
    ) -> tuple[str, bool]:
        """Reserve credits and queue a run of a request its entry already parsed (page, CLI,
        API: each parses at its own edge). Returns (workflow id, newly created). With
        `reuse_still`, the run takes the still of an earlier run with the same image request
        when there is one (core.reuse). The API's `idempotency_key` returns the run it started
        for core.idempotency.WINDOW.

        Raises RequestValidationError (a project the user does not own, a webhook to a private
        address), InsufficientCreditsError or BudgetExceededError with nothing written.
        """
        if request.webhook_url:
            webhooks.check_webhook_url(
                request.webhook_url, allow_private=self.settings.allow_private_webhooks
            )
        # The run's trace starts here: the runner continues it from the row, the broker's
        # message carries it to a worker (core.telemetry).
        with telemetry.starting_run() as span:
            started = workflows.start_workflow(
                self.db,
                user_id=user.id,
                request=request,
                client_key=client_key or uuid.uuid4().hex,
                actor=user.email,
                global_webhook_url=self.settings.webhook_url,
                still=StillChoice(self.still_fingerprint(request), reuse_still),
                idempotency_key=idempotency_key,
                runs_here=self.orchestrator,
            )
            telemetry.started(span, started.workflow_id, created=started.created)
            if started.created:
                if self.mailer is not None:
                    self.mailer.nudge()  # the start may have crossed a budget threshold
                self.orchestrator.submit(started.workflow_id, started.view)
        return started.workflow_id, started.created

    def still_fingerprint(self, request: WorkflowRequest) -> str:
        spec = reuse.image_spec(request, self.settings.image_model)
        return reuse.fingerprint(self.providers.image.name, spec)

    def reuse_offer(self, user: UserView, request: WorkflowRequest) -> reuse.ReuseOffer | None:
        """The still a start of `request` would reuse, and the credits that saves; None when
        there is none, or when the source's still is no longer in storage."""
        with self.db.read() as session:
            source = reuse.find_source(session, user.id, self.still_fingerprint(request))
            if source is None:
                return None
            found = reuse.source_still(session, source)
            saved = credits.image_cost_of(request, credits.load_costs(session))
        still = found.still
        if still is not None:
            try:
                stored = self.providers.storage.head(still.storage_key)
            except ProviderError:  # storage not answering: offer nothing rather than fail
                return None
            if stored is None or stored.size != still.size_bytes:
                return None
        return reuse.ReuseOffer(source, saved)

    def cancel(self, workflow_id: str, user: UserView) -> WorkflowView:
        """Flag the run (its runner, on any machine, stops at its next check); a run that had
        not started is cancelled here, and its message, if still in the broker, revoked."""
        view = workflows.request_cancel(self.db, workflow_id, user)
        if view.started_at is None:
            self.orchestrator.executor.revoke(workflow_id)
        return view

    def recover_and_wait(
        self, *, wait_for_held: bool = False, poll_s: float = 0.5
    ) -> tuple[list[RecoveredRun], list[liveness.HeldRun]]:
        """`python -m core recover`: one recovery pass taking every queued run and every run
        whose runner is dead, then wait for those to end. Returns what happened to each (and
        what was refunded), and the runs live runners still hold. With `wait_for_held`, also
        wait for those, passing again meanwhile so a holder that dies is taken over."""
        resumed = list(self.orchestrator.recover(wait_turn=True, all_queued=True).resubmitted)
        while True:
            with self.db.read() as session:
                pending = [
                    w for w in resumed if workflows.load_workflow(session, w).status.is_active
                ]
                held = [r for r in liveness.running_runs(session) if r.workflow_id not in resumed]
            if not pending and not (wait_for_held and held):
                break
            time.sleep(poll_s)
            if wait_for_held:
                again = self.orchestrator.recover(wait_turn=True, all_queued=True).resubmitted
                resumed += [w for w in again if w not in resumed]
        with self.db.read() as session:
            return [_recovered(session, wid) for wid in resumed], held

    def shutdown(self) -> None:
        if self.mailer is not None:
            self.mailer.stop()
        self.orchestrator.shutdown()
        self.webhooks.stop()
        self.db.dispose()
