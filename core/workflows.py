"""Workflows and their steps: creation, read views for pages, and every state write.

State writes are conditional UPDATEs: the WHERE clause holds the states the transition table
allows (core.states) and, for a running workflow, the runner that owns it. A write that matches no
row lost a race or broke the table, and raises InvalidTransitionError instead of passing silently.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from types import SimpleNamespace
from typing import Any, Protocol

from sqlalchemy import (
    Connection,
    Row,
    and_,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core import (
    budgets,
    credits,
    idempotency,
    inbox,
    metrics,
    reuse,
    run_start,
    telemetry,
    webhooks,
)
from core.auth import UserView
from core.db import Bound, Database
from core.errors import (
    FailureCategory,
    InvalidTransitionError,
    NotFoundError,
    PermissionDeniedError,
    RequestValidationError,
)
from core.models import (
    ApiCall,
    Asset,
    Project,
    User,
    Workflow,
    WorkflowStep,
    new_workflow_id,
    utcnow,
    view_of,
)
from core.run_events import EventKind, append_event, final_payload, run_payload, step_payload
from core.schemas import WorkflowRequest
from core.states import (
    STEP_ORDER,
    StepName,
    StepStatus,
    WorkflowStatus,
    workflow_sources,
)

# The columns of a step that change as it runs (the others are set when its run is created).
STEP_COLUMNS = (
    "status",
    "progress",
    "message",
    "attempts",
    "provider_request_id",
    "output",
    "error_message",
    "error_category",
    "started_at",
    "finished_at",
    "deadline_at",
    "worker_id",
)


@dataclass(frozen=True)
class StepView:
    name: StepName
    position: int
    status: StepStatus
    progress: int
    message: str
    attempts: int
    provider_request_id: str | None
    output: dict[str, Any]
    error_message: str | None
    error_category: str | None
    started_at: datetime | None
    finished_at: datetime | None
    deadline_at: datetime | None
    worker_id: str | None = None  # host:pid of the process that last started it

    @property
    def duration_s(self) -> float | None:
        return elapsed_s(self.started_at, self.finished_at)


@dataclass(frozen=True)
class WorkflowView:
    id: str
    user_id: int
    project_id: int | None
    status: WorkflowStatus
    request: WorkflowRequest
    cost_credits: int
    cancel_requested: bool
    runner_id: str | None
    heartbeat_at: datetime | None
    recoveries: int
    error_message: str | None
    error_category: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    steps: tuple[StepView, ...]
    # The video provider's answer to a cancel (by the user or the deadline); None: none was asked.
    provider_cancel_confirmed: bool | None = None
    reuse_image_from: str | None = None  # the run whose still this one reuses (core.reuse)
    worker_id: str | None = None  # host:pid of the process that last claimed it
    global_webhook_url: str | None = None  # the installation's WEBHOOK_URL when it was created
    trace_id: str | None = None  # its trace (core.telemetry); None: tracing was off
    traceparent: str | None = None

    def step(self, name: StepName) -> StepView:
        return next(s for s in self.steps if s.name == name)

    @property
    def progress(self) -> int:
        """Overall progress: each step weighs the same. Only completed steps count as done, so
        a run that failed or was cancelled reports how far it really got (its skipped steps,
        and whatever its last step had reached, count for nothing)."""
        done = sum(self._step_share(s) for s in self.steps)
        return round(done / len(self.steps)) if self.steps else 0

    def _step_share(self, step: StepView) -> int:
        if step.status is StepStatus.COMPLETED:
            return 100
        return step.progress if step.status is StepStatus.PROCESSING else 0

    @property
    def steps_done(self) -> int:
        return sum(s.status is StepStatus.COMPLETED for s in self.steps)

    @property
    def ended_at_step(self) -> StepView | None:
        """The step a failed or cancelled run stopped at (None when none had started)."""
        ended = (StepStatus.FAILED, StepStatus.CANCELLED)
        return next((s for s in self.steps if s.status in ended), None)

    @property
    def duration_s(self) -> float | None:
        return elapsed_s(self.started_at, self.finished_at)


def elapsed_s(started_at: datetime | None, finished_at: datetime | None) -> float | None:
    """Seconds from start to finish, or to now while still running."""
    if started_at is None:
        return None
    return ((finished_at or utcnow()) - started_at).total_seconds()


@dataclass(frozen=True)
class AssetView:
    id: int
    workflow_id: str
    kind: str
    storage_backend: str
    storage_key: str
    content_type: str
    size_bytes: int
    sha256: str
    width: int | None
    height: int | None
    duration_s: float | None


@dataclass(frozen=True)
class ApiCallRecord:
    """One provider call attempt, buffered by the orchestrator and written with its next write."""

    workflow_id: str | None
    step: str | None
    provider: str
    operation: str
    attempt: int
    started_at: datetime
    duration_ms: int
    outcome: str
    status_code: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    cost_usd: Decimal = Decimal(0)


# ---------------------------------------------------------------------------------------------
# Creating and reading


@dataclass(frozen=True)
class StillChoice:
    """How a new run gets its still: its image request's fingerprint (core.reuse), and whether
    it may reuse a still already paid for with the same one."""

    fingerprint: str | None = None
    reuse: bool = False


@dataclass(frozen=True)
class Started:
    """What a start did: the run (made by this start, or by an earlier one with the same client
    or idempotency key) and, when this start wrote it in one statement (core.run_start), the
    run as written, which a runner in this process then needs not read back."""

    workflow_id: str
    created: bool
    view: WorkflowView | None = None


class ClaimOffer(Protocol):
    """A runner's claim of a new run, sent in its start's round trip (core.orchestrator)."""

    statement: Bound

    def settle(self, row: Row[Any] | None) -> bool:
        """The claim's row after the round trip (None: the round trip failed); whether the run
        is now held by the runner. Called exactly once."""


class RunsAtStart(Protocol):
    """A process that can run a new run at once: its runner claims the run in the start's
    round trip, so the run is running when the start returns, without a round trip of its own."""

    def claim_at_start(self, view: WorkflowView) -> ClaimOffer | None:
        """The claim of `view` (the run as its start writes it); None when no runner here is
        free to run it now (it then starts queued)."""


def start_workflow(
    db: Database,
    *,
    user_id: int,
    request: WorkflowRequest,
    client_key: str,
    actor: str,
    global_webhook_url: str | None = None,
    still: StillChoice = StillChoice(),  # noqa: B008 - frozen, so one shared default is safe
    idempotency_key: str | None = None,
    now: datetime | None = None,
    runs_here: RunsAtStart | None = None,
) -> Started:
    """Create a workflow and reserve its credits in one transaction.

    The same (user, client_key) always yields the same workflow: a double click or a retried
    call creates one run and one charge, even when both requests race. `global_webhook_url`
    (the installation's WEBHOOK_URL) will hear every event of the run. An API client's
    `idempotency_key` does the same for core.idempotency.WINDOW after `now`. With
    `runs_here`, a common start (below) is claimed by a runner of this process as it is written.
    """
    now = now or utcnow()

    def existing(session: Session) -> str | None:
        found = _by_client_key(session, user_id, client_key)
        if found is None and idempotency_key is not None:
            found = idempotency.remembered(session, user_id, idempotency_key, now)
        return found

    try:
        if db.dialect == "postgresql" and idempotency_key is None and not still.reuse:
            started = _start_in_one_statement(
                db,
                user_id,
                request,
                client_key,
                actor,
                global_webhook_url,
                still.fingerprint,
                runs_here,
            )
            if started is not None:
                return started
        with db.begin() as session:
            found = existing(session)
            if found is not None:
                return Started(found, created=False)
            workflow_id = _create(
                session, user_id, request, client_key, actor, global_webhook_url, still
            )
            if idempotency_key is not None:
                idempotency.remember(session, user_id, idempotency_key, workflow_id, now)
            return Started(workflow_id, created=True)
    except IntegrityError:
        with db.read() as session:
            found = existing(session)
        if found is None:
            raise
        return Started(found, created=False)


def _start_in_one_statement(
    db: Database,
    user_id: int,
    request: WorkflowRequest,
    client_key: str,
    actor: str,
    global_webhook_url: str | None,
    fingerprint: str | None,
    runs_here: RunsAtStart | None,
) -> Started | None:
    """The common start as one statement, priced with the costs this process read last; None
    when it does not apply (no costs read yet, a budget, a refusal, costs changed since): the
    full start then decides, and words any refusal. A runner of `runs_here` free now claims
    the run in the same round trip."""
    seen = credits.costs_last_read()
    if seen is None:
        return None
    run = _new_run(user_id, request, client_key, global_webhook_url, fingerprint, seen.costs)
    steps = _new_steps(run["id"])
    start = run_start.StartRequest(
        run=run,
        steps=steps,
        scopes=[scope.key for scope in budgets.scopes_of(user_id, request.project_id)],
        costs_key=credits.COSTS_SETTING_KEY,
        stored_costs=seen.stored,
        actor=actor,
        reason=credits.RESERVE_REASON,
        event_kind=EventKind.RUN.value,
        event=run_payload(WorkflowStatus.QUEUED),
    )
    view = _queued_view(run, request, steps)
    claim = runs_here.claim_at_start(view) if runs_here is not None else None
    if claim is None:
        outcome = db.statements.run(lambda connection: run_start.start(connection, start))
        written, existing_id = outcome.created, outcome.existing_id
    else:
        written, existing_id = _start_claimed(db, start, claim), None
    if written:
        metrics.start_observed(request.video_model, run["cost_credits"])
        return Started(run["id"], created=True, view=view)
    if existing_id is not None:
        # Our own run when the statement was sent again after a lost connection.
        return Started(existing_id, created=existing_id == run["id"])
    return None


def _start_claimed(db: Database, start: run_start.StartRequest, claim: ClaimOffer) -> bool:
    """Send the start with the claim; whether the start wrote the run (claimed or not: the
    claim is refused when the user already has their limit of runs running). Sent again after
    a lost answer, the pair finds the run written and claimed by the first send, and reads as
    refused: the run, running with its lock given back, is taken over by recovery."""
    row = None
    try:
        row = db.statements.run(lambda c: run_start.start_then(c, start, claim.statement))
    finally:
        claimed = claim.settle(row)
    if claimed:
        return True
    workflow_id = start.run["id"]
    return db.statements.run(lambda connection: run_start.written(connection, workflow_id))


def _queued_view(
    run: dict[str, Any], request: WorkflowRequest, steps: list[dict[str, Any]]
) -> WorkflowView:
    """The run as the one-statement start writes it: `run`'s columns, the rest as created."""
    return WorkflowView(
        id=run["id"],
        user_id=run["user_id"],
        project_id=run["project_id"],
        status=WorkflowStatus.QUEUED,
        request=request,
        cost_credits=run["cost_credits"],
        cancel_requested=False,
        runner_id=None,
        heartbeat_at=None,
        recoveries=0,
        error_message=None,
        error_category=None,
        created_at=run["created_at"],
        started_at=None,
        finished_at=None,
        steps=tuple(_step_view(SimpleNamespace(**step)) for step in steps),
        global_webhook_url=run["global_webhook_url"],
        trace_id=run["trace_id"],
        traceparent=run["traceparent"],
    )


def _by_client_key(session: Session, user_id: int, client_key: str) -> str | None:
    return session.execute(
        select(Workflow.id).where(Workflow.user_id == user_id, Workflow.client_key == client_key)
    ).scalar()


def _new_run(
    user_id: int,
    request: WorkflowRequest,
    client_key: str,
    global_webhook_url: str | None,
    fingerprint: str | None,
    costs: credits.CreditCosts,
) -> dict[str, Any]:
    """The columns a start decides for its run; the others keep their defaults."""
    return {
        "id": new_workflow_id(),
        "user_id": user_id,
        "project_id": request.project_id,
        "client_key": client_key,
        "status": WorkflowStatus.QUEUED.value,
        "image_prompt": request.image_prompt,
        "video_prompt": request.video_prompt,
        "request": request.to_json(),
        "cost_credits": credits.cost_of(request, costs),
        "image_credits": credits.image_cost_of(request, costs),
        "video_model": request.video_model,
        "image_fingerprint": fingerprint,
        "global_webhook_url": global_webhook_url,
        "created_at": utcnow(),
        **telemetry.run_trace_columns(),
    }


def _new_steps(workflow_id: str) -> list[dict[str, Any]]:
    """A new run's steps, every column as written (the view of the run is built from them)."""
    return [
        {
            **dict.fromkeys(STEP_COLUMNS),
            "workflow_id": workflow_id,
            "name": name.value,
            "position": position,
            "status": StepStatus.PENDING.value,
            "progress": 0,
            "message": "",
            "attempts": 0,
            "output": {},
        }
        for position, name in enumerate(STEP_ORDER)
    ]


def _create(
    session: Session,
    user_id: int,
    request: WorkflowRequest,
    client_key: str,
    actor: str,
    global_webhook_url: str | None,
    still: StillChoice,
) -> str:
    if request.project_id is not None and not _owns_project(session, user_id, request.project_id):
        raise RequestValidationError({"projectId": "no such project"})
    active = session.execute(select(User.is_active).where(User.id == user_id)).scalar()
    if not active:
        raise PermissionDeniedError("this account is deactivated")
    costs = credits.load_costs(session)
    run = _new_run(user_id, request, client_key, global_webhook_url, still.fingerprint, costs)
    reused = None
    if still.reuse and still.fingerprint:
        reused = reuse.find_source(session, user_id, still.fingerprint)
    workflow = Workflow(**run, reuse_image_from=reused)
    session.add(workflow)
    session.flush()
    session.execute(insert(WorkflowStep), _new_steps(workflow.id))
    budgets.charge(
        session,
        workflow_id=workflow.id,
        user_id=user_id,
        project_id=request.project_id,
        cost=workflow.cost_credits,
        at=workflow.created_at,
    )
    credits.reserve(session, user_id, workflow.cost_credits, workflow_id=workflow.id, actor=actor)
    append_event(session, workflow.id, EventKind.RUN, run_payload(WorkflowStatus.QUEUED))
    metrics.run_started(session, workflow.video_model)
    return workflow.id


def _owns_project(session: Session, user_id: int, project_id: int) -> bool:
    owner = session.execute(select(Project.user_id).where(Project.id == project_id)).scalar()
    return owner == user_id


def load_workflow(session: Session, workflow_id: str) -> WorkflowView:
    workflow = session.get(Workflow, workflow_id)
    if workflow is None:
        raise NotFoundError(f"workflow {workflow_id} not found")
    steps = session.execute(
        select(WorkflowStep)
        .where(WorkflowStep.workflow_id == workflow_id)
        .order_by(WorkflowStep.position)
    ).scalars()
    return _workflow_view(workflow, [_step_view(s) for s in steps])


def read_workflow(connection: Connection, workflow_id: str) -> WorkflowView | None:
    """The run as it stands, read with two plain statements on a connection (the runner's
    read before it claims: no ORM on the hot path). None when there is no such run."""
    run = connection.execute(
        select(Workflow.__table__).where(Workflow.__table__.c.id == workflow_id)
    ).first()
    if run is None:
        return None
    steps = WorkflowStep.__table__.c
    rows = connection.execute(
        select(WorkflowStep.__table__)
        .where(steps.workflow_id == workflow_id)
        .order_by(steps.position)
    )
    return _workflow_view(run, [_step_view(s) for s in rows])


def workflow_for(session: Session, workflow_id: str, viewer: UserView) -> WorkflowView:
    """A workflow the viewer may see: their own, or any for an admin. Others look missing."""
    view = load_workflow(session, workflow_id)
    if view.user_id != viewer.id and not viewer.is_admin:
        raise NotFoundError(f"workflow {workflow_id} not found")
    return view


def _workflow_view(w: Workflow | Row[Any], steps: Sequence[StepView]) -> WorkflowView:
    return WorkflowView(
        id=w.id,
        user_id=w.user_id,
        project_id=w.project_id,
        status=WorkflowStatus(w.status),
        request=WorkflowRequest.model_validate(w.request),
        cost_credits=w.cost_credits,
        cancel_requested=w.cancel_requested,
        runner_id=w.runner_id,
        heartbeat_at=w.heartbeat_at,
        recoveries=w.recoveries,
        error_message=w.error_message,
        error_category=w.error_category,
        created_at=w.created_at,
        started_at=w.started_at,
        finished_at=w.finished_at,
        steps=tuple(steps),
        provider_cancel_confirmed=w.provider_cancel_confirmed,
        reuse_image_from=w.reuse_image_from,
        worker_id=w.worker_id,
        global_webhook_url=w.global_webhook_url,
        trace_id=w.trace_id,
        traceparent=w.traceparent,
    )


def _step_view(s: WorkflowStep | Row[Any] | SimpleNamespace) -> StepView:
    return StepView(
        name=StepName(s.name),
        position=s.position,
        status=StepStatus(s.status),
        progress=s.progress,
        message=s.message,
        attempts=s.attempts,
        provider_request_id=s.provider_request_id,
        output=dict(s.output or {}),
        error_message=s.error_message,
        error_category=s.error_category,
        started_at=s.started_at,
        finished_at=s.finished_at,
        deadline_at=s.deadline_at,
        worker_id=s.worker_id,
    )


def assets_of(session: Session, workflow_id: str) -> list[AssetView]:
    rows = session.execute(
        select(Asset).where(Asset.workflow_id == workflow_id).order_by(Asset.id)
    ).scalars()
    return [view_of(AssetView, a) for a in rows]


def request_cancel(db: Database, workflow_id: str, viewer: UserView) -> WorkflowView:
    """Flag a run for cancellation. A run nobody has picked up yet ends here and now, refunded;
    a running one is stopped by its runner at the next step boundary or poll."""
    with db.begin() as session:
        view = workflow_for(session, workflow_id, viewer)
        if view.status.is_terminal:
            return view
        if not view.cancel_requested:
            _update(
                session,
                update(Workflow).where(Workflow.id == workflow_id).values(cancel_requested=True),
            )
            append_event(
                session, workflow_id, EventKind.RUN, run_payload(view.status, cancelRequested=True)
            )
        moved = _update(
            session,
            update(Workflow)
            .where(Workflow.id == workflow_id, Workflow.status == WorkflowStatus.QUEUED.value)
            .values(status=WorkflowStatus.CANCELLED.value, finished_at=utcnow()),
        )
        if moved:
            message = "cancelled before it started"
            _append_steps(
                session, _close_steps(session, workflow_id, StepStatus.CANCELLED, message)
            )
            refunded = credits.refund(session, workflow_id, reason="cancelled by the user")
            inbox.run_ended(session, workflow_id)
            webhooks.enqueue(
                session, workflow_id, "completed", {"status": WorkflowStatus.CANCELLED.value}
            )
            final = final_payload(WorkflowStatus.CANCELLED, refunded=refunded, message=message)
            append_event(session, workflow_id, EventKind.FINAL, final)
            metrics.run_finished(session, workflow_id)
        return load_workflow(session, workflow_id)


def _update(session: Session, statement: Any) -> int:
    """Run a bulk UPDATE and return its row count. Sessions here never hold the rows they
    update, so the ORM's session synchronisation (an extra RETURNING or SELECT) is skipped."""
    result = session.execute(statement, execution_options={"synchronize_session": False})
    return result.rowcount


def claim(
    session: Session,
    workflow_id: str,
    runner_id: str,
    *,
    stale_before: datetime,
    worker_id: str | None = None,
    max_active_per_user: int | None = None,
) -> bool:
    """Take a queued run (its start), or a running one whose runner stopped beating (a
    recovery). True when we won.

    With `max_active_per_user`, a queued run stays queued while its user already has that many
    running (a takeover keeps the slot its run already holds)."""
    if max_active_per_user is not None and _user_at_limit(
        session, workflow_id, max_active_per_user
    ):
        return False
    now = utcnow()
    started = session.execute(
        update(Workflow)
        .where(Workflow.id == workflow_id, Workflow.status == WorkflowStatus.QUEUED.value)
        .values(
            status=WorkflowStatus.RUNNING.value,
            runner_id=runner_id,
            worker_id=worker_id,
            heartbeat_at=now,
            started_at=now,
        )
        .returning(Workflow.recoveries),
        execution_options={"synchronize_session": False},
    ).first()
    if started is not None:
        webhooks.enqueue(session, workflow_id, "started", {"status": WorkflowStatus.RUNNING.value})
        payload = run_payload(WorkflowStatus.RUNNING, recoveries=started.recoveries)
        append_event(session, workflow_id, EventKind.RUN, payload)
        return True
    recovered = session.execute(
        update(Workflow)
        .where(
            Workflow.id == workflow_id,
            Workflow.status == WorkflowStatus.RUNNING.value,
            or_(Workflow.heartbeat_at.is_(None), Workflow.heartbeat_at < stale_before),
        )
        .values(
            runner_id=runner_id,
            worker_id=worker_id,
            heartbeat_at=now,
            recoveries=Workflow.recoveries + 1,
        )
        .returning(Workflow.recoveries),
        execution_options={"synchronize_session": False},
    ).first()
    if recovered is None:
        return False
    payload = run_payload(WorkflowStatus.RUNNING, recoveries=recovered.recoveries)
    append_event(session, workflow_id, EventKind.RUN, payload)
    return True


def _user_at_limit(session: Session, workflow_id: str, limit: int) -> bool:
    """Whether the queued run's user already has `limit` runs running. The run's row, then its
    user's, are locked (Postgres) until the claim commits, so two workers claiming the same
    user's runs count one after the other; the order (run, then user) is the one a cancel and
    a refund take, so they cannot deadlock with a claim."""
    row = session.execute(
        select(Workflow.user_id, Workflow.status)
        .where(Workflow.id == workflow_id)
        .with_for_update()
    ).first()
    if row is None or row.status != WorkflowStatus.QUEUED.value:
        return False
    session.execute(select(User.id).where(User.id == row.user_id).with_for_update())
    running = session.execute(
        select(func.count())
        .select_from(Workflow)
        .where(Workflow.user_id == row.user_id, Workflow.status == WorkflowStatus.RUNNING.value)
    ).scalar_one()
    return running >= limit


def heartbeat(session: Session, workflow_ids: Iterable[str], runner_id: str) -> None:
    ids = list(workflow_ids)
    if ids:
        _update(
            session,
            update(Workflow)
            .where(Workflow.id.in_(ids), Workflow.runner_id == runner_id)
            .values(heartbeat_at=utcnow()),
        )


def record_provider_cancel(
    session: Session, workflow_id: str, runner_id: str, *, confirmed: bool
) -> None:
    """Whether the video provider confirmed stopping the run's job; written by the runner that
    holds the run, in the transaction that ends it."""
    done = _update(
        session,
        update(Workflow)
        .where(Workflow.id == workflow_id, Workflow.runner_id == runner_id)
        .values(provider_cancel_confirmed=confirmed),
    )
    if not done:
        raise InvalidTransitionError(f"workflow {workflow_id} is not held by {runner_id}")


def release(session: Session, workflow_id: str, runner_id: str) -> None:
    """Give a run back untouched (clean shutdown): recovery resumes it without waiting."""
    _update(
        session,
        update(Workflow)
        .where(Workflow.id == workflow_id, Workflow.runner_id == runner_id)
        .values(runner_id=None, heartbeat_at=None),
    )


def complete_run(session: Session, workflow_id: str, runner_id: str) -> None:
    _move_run(session, workflow_id, runner_id, WorkflowStatus.COMPLETED)
    inbox.run_ended(session, workflow_id)
    webhooks.enqueue(session, workflow_id, "completed", {"status": WorkflowStatus.COMPLETED.value})
    append_event(session, workflow_id, EventKind.FINAL, final_payload(WorkflowStatus.COMPLETED))
    metrics.run_finished(session, workflow_id)


def end_run(
    session: Session,
    workflow_id: str,
    runner_id: str | None,
    target: WorkflowStatus,
    *,
    message: str,
    category: FailureCategory | None,
) -> int:
    """End a run failed or cancelled: the step in flight takes the same end, the steps after it
    are skipped, and the credits come back exactly once. Returns the credits refunded."""
    _move_run(session, workflow_id, runner_id, target, message=message, category=category)
    step_end = StepStatus.FAILED if target is WorkflowStatus.FAILED else StepStatus.CANCELLED
    ended = _update_steps(
        session,
        update(WorkflowStep)
        .where(
            WorkflowStep.workflow_id == workflow_id,
            WorkflowStep.status == StepStatus.PROCESSING.value,
        )
        .values(
            status=step_end.value,
            message=message,
            error_message=message,
            error_category=category.value if category else None,
            finished_at=utcnow(),
        ),
    )
    _append_steps(
        session, ended + _close_steps(session, workflow_id, StepStatus.SKIPPED, "skipped")
    )
    reason = "cancelled by the user" if target is WorkflowStatus.CANCELLED else message
    refunded = credits.refund(session, workflow_id, reason=reason)
    inbox.run_ended(session, workflow_id)
    in_flight = ended[0].name if ended else None
    error = {"code": category.value if category else None, "message": message, "step": in_flight}
    if in_flight is not None:
        webhooks.enqueue(session, workflow_id, "step", {"step": in_flight, "state": step_end.value})
    webhooks.enqueue(
        session,
        workflow_id,
        "completed",
        {"status": target.value, "error": error, "refundedCredits": refunded},
    )
    final = final_payload(
        target,
        refunded=refunded,
        message=message,
        code=category.value if category else None,
        step=in_flight,
    )
    append_event(session, workflow_id, EventKind.FINAL, final)
    metrics.run_finished(session, workflow_id)
    return refunded


def _move_run(
    session: Session,
    workflow_id: str,
    runner_id: str | None,
    target: WorkflowStatus,
    *,
    message: str | None = None,
    category: FailureCategory | None = None,
) -> None:
    condition = [Workflow.id == workflow_id, Workflow.status.in_(workflow_sources(target))]
    if runner_id is not None:
        condition.append(Workflow.runner_id == runner_id)
    done = _update(
        session,
        update(Workflow)
        .where(*condition)
        .values(
            status=target.value,
            error_message=message,
            error_category=category.value if category else None,
            finished_at=utcnow(),
            runner_id=None,
            heartbeat_at=None,
        ),
    )
    if not done:
        raise InvalidTransitionError(f"workflow {workflow_id}: cannot become {target}")


def _close_steps(
    session: Session, workflow_id: str, target: StepStatus, message: str
) -> list[Row[Any]]:
    """Every step that never started ends as `target` (skipped after a failure)."""
    return _update_steps(
        session,
        update(WorkflowStep)
        .where(
            WorkflowStep.workflow_id == workflow_id,
            WorkflowStep.status == StepStatus.PENDING.value,
        )
        .values(status=target.value, message=message, finished_at=utcnow()),
    )


# What a step event carries (core.run_events.step_payload), read back by the UPDATE that wrote it.
_STEP_STATE = (
    WorkflowStep.workflow_id,
    WorkflowStep.name,
    WorkflowStep.position,
    WorkflowStep.status,
    WorkflowStep.progress,
    WorkflowStep.message,
    WorkflowStep.error_message,
    WorkflowStep.attempts,
    WorkflowStep.started_at,
    WorkflowStep.finished_at,
)


def _update_steps(session: Session, statement: Any) -> list[Row[Any]]:
    """Run a bulk UPDATE of steps; returns the rows it wrote as they now stand, in step order."""
    rows = session.execute(
        statement.returning(*_STEP_STATE), execution_options={"synchronize_session": False}
    ).all()
    return sorted(rows, key=lambda row: row.position)


def _append_steps(session: Session, rows: Sequence[Row[Any]]) -> None:
    """One step event per row written, in step order (the caller's rows are sorted)."""
    for row in rows:
        append_event(session, row.workflow_id, EventKind.STEP, step_payload(row))


def stale_runs(
    session: Session,
    *,
    stale_before: datetime,
    queued_before: datetime | None = None,
    limit: int = 100,
) -> list[str]:
    """Runs nobody is looking after: running with an old (or released) heartbeat, or queued
    since before `queued_before` (default `stale_before`: the process that queued them died
    before running them, or their message was lost) and not re-sent since."""
    rows = session.execute(
        select(Workflow.id)
        .where(
            or_(
                and_(
                    Workflow.status == WorkflowStatus.RUNNING.value,
                    or_(Workflow.heartbeat_at.is_(None), Workflow.heartbeat_at < stale_before),
                ),
                and_(
                    Workflow.status == WorkflowStatus.QUEUED.value,
                    func.coalesce(Workflow.nudged_at, Workflow.created_at)
                    < (queued_before or stale_before),
                ),
            )
        )
        .order_by(Workflow.created_at)
        .limit(limit)
    )
    return list(rows.scalars())


def record_calls(session: Session, calls: Sequence[ApiCallRecord]) -> None:
    # A Core executemany on the session's connection: the ORM bulk path costs several times more
    # per row, and these rows are never loaded back into this session.
    if calls:
        session.connection().execute(insert(ApiCall.__table__), [vars(c) for c in calls])


def add_asset(session: Session, **fields: Any) -> int:
    """Insert an asset row (columns as keyword arguments), or refresh the existing one for the
    same workflow and kind (an upload retried after a crash). Returns the asset id."""
    existing = session.execute(
        select(Asset.id).where(
            Asset.workflow_id == fields["workflow_id"], Asset.kind == fields["kind"]
        )
    ).scalar()
    if existing is not None:
        _update(session, update(Asset).where(Asset.id == existing).values(**fields))
        return existing
    asset = Asset(**fields)
    session.add(asset)
    session.flush()
    return asset.id
