"""SQLAlchemy 2.0 typed tables. States are plain strings (see core.states), never native enums."""

from __future__ import annotations

import uuid
from dataclasses import fields
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ColumnElement,
    Computed,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from core.clock import utcnow
from core.states import StepStatus, WorkflowStatus

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

V = TypeVar("V")

# SQLite only autoincrements INTEGER PRIMARY KEY, so big ids are INTEGER there.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def view_of(view: type[V], row: Base) -> V:
    """A frozen view dataclass filled from the same-named attributes of an ORM row: pages and
    threads get plain values, never live rows."""
    return view(**{f.name: getattr(row, f.name) for f in fields(view)})  # type: ignore[arg-type]


def new_workflow_id() -> str:
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in Python on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    display_name: Mapped[str] = mapped_column(String(120), default="")
    role: Mapped[str] = mapped_column(String(16), default="user")
    password_hash: Mapped[str | None] = mapped_column(String(255))
    # Cached sum of this user's ledger rows; only core.credits writes it.
    balance: Mapped[int] = mapped_column(Integer, default=0)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    def __repr__(self) -> str:
        return f"User(id={self.id}, email={self.email!r}, role={self.role})"


class CreditTransaction(Base):
    """Append-only ledger. amount is signed: grants and refunds positive, reservations negative."""

    __tablename__ = "credit_transactions"
    # Monitoring (reserves and refunds by time) and the refunds list read it by kind and time.
    __table_args__ = (Index("ix_credit_transactions_kind_created", "kind", "created_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # grant | reserve | refund | adjust
    amount: Mapped[int] = mapped_column(Integer)
    balance_after: Mapped[int] = mapped_column(Integer)
    workflow_id: Mapped[str | None] = mapped_column(ForeignKey("workflows.id"), index=True)
    actor: Mapped[str] = mapped_column(String(320))  # "system", or the acting user's email
    reason: Mapped[str] = mapped_column(Text, default="")
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    def __repr__(self) -> str:
        return f"CreditTransaction(id={self.id}, user={self.user_id}, {self.kind} {self.amount})"


class Project(Base):
    __tablename__ = "projects"
    __table_args__ = (UniqueConstraint("user_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    name: Mapped[str] = mapped_column(String(120))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    def __repr__(self) -> str:
        return f"Project(id={self.id}, name={self.name!r})"


class Workflow(Base):
    __tablename__ = "workflows"
    __table_args__ = (
        UniqueConstraint("user_id", "client_key"),
        Index("ix_workflows_user_created", "user_id", "created_at"),
        Index("ix_workflows_status_heartbeat", "status", "heartbeat_at"),
        # INCLUDE (Postgres): the monitoring KPIs and outcomes read runs by creation time
        # without touching the wide rows (prompts, request JSON).
        Index(
            "ix_workflows_created_at",
            "created_at",
            postgresql_include=["status", "started_at", "finished_at"],
        ),
        # Still reuse (core.reuse): a user's runs with the same image request, newest first,
        # in one index probe.
        Index("ix_workflows_user_fingerprint", "user_id", "image_fingerprint", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_workflow_id)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    project_id: Mapped[int | None] = mapped_column(ForeignKey("projects.id"), index=True)
    # A key chosen by the client per start, so a double click or retried call makes one run.
    client_key: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16), default=WorkflowStatus.QUEUED.value)
    image_prompt: Mapped[str] = mapped_column(Text)
    video_prompt: Mapped[str] = mapped_column(Text)
    request: Mapped[dict[str, Any]] = mapped_column()  # the validated request, seed field names
    cost_credits: Mapped[int] = mapped_column(Integer)
    # The request's video model (None: the installation's default), as a column so monitoring
    # groups runs by model without parsing every request's JSON.
    video_model: Mapped[str | None] = mapped_column(String(100))
    # The still's share of cost_credits as priced at start: what a reused still gives back.
    image_credits: Mapped[int] = mapped_column(Integer, server_default="0")
    # SHA-256 of the image request as the provider would get it (core.reuse.fingerprint).
    image_fingerprint: Mapped[str | None] = mapped_column(String(64))
    # The run whose still this one reuses instead of paying for its own (chosen at start). A
    # run id without a foreign key: adding one would make SQLite rebuild this table.
    reuse_image_from: Mapped[str | None] = mapped_column(String(32))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # The video provider's answer to a cancel (user or deadline): None when no job was stopped.
    provider_cancel_confirmed: Mapped[bool | None] = mapped_column(Boolean)
    runner_id: Mapped[str | None] = mapped_column(String(64))
    # The process (host:pid) that last claimed the run, kept after it ends: who ran it.
    worker_id: Mapped[str | None] = mapped_column(String(128))
    # The trace the run belongs to (core.telemetry): its 32-hex id, shown to users to hand an
    # operator, and the W3C traceparent of the span that created it, which every runner's spans
    # continue from. None when tracing was off at creation.
    trace_id: Mapped[str | None] = mapped_column(String(32))
    traceparent: Mapped[str | None] = mapped_column(String(55))
    # When recovery last re-sent the run (a lost message): the next re-send waits a while.
    nudged_at: Mapped[datetime | None] = mapped_column()
    heartbeat_at: Mapped[datetime | None] = mapped_column()
    recoveries: Mapped[int] = mapped_column(Integer, default=0)
    error_message: Mapped[str | None] = mapped_column(Text)
    error_category: Mapped[str | None] = mapped_column(String(32))
    # The installation's WEBHOOK_URL when the run was created: it hears every event of the run
    # (the run's own webhookUrl is in its request).
    global_webhook_url: Mapped[str | None] = mapped_column(String(2000))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    # The seq of the run's newest run_events row: bumped by core.run_events.append_event in the
    # same UPDATE that returns it, so a run's events are numbered without gaps or doubles.
    last_event_seq: Mapped[int] = mapped_column(Integer, server_default="0")

    steps: Mapped[list[WorkflowStep]] = relationship(
        back_populates="workflow", order_by="WorkflowStep.position"
    )

    def __repr__(self) -> str:
        return f"Workflow(id={self.id}, status={self.status})"


class StepDurationMs(ColumnElement[int]):
    """SQL for a step's duration in whole milliseconds, rounded half away from zero from the
    exact timestamps, in each dialect's words (SQLite stores 'YYYY-MM-DD HH:MM:SS.ffffff')."""

    inherit_cache = True
    type = Integer()


@compiles(StepDurationMs)
def _step_duration_ms(element: StepDurationMs, compiler: Any, **kw: Any) -> str:
    # Postgres' canonical form of the expression, so the migration check compares like to like.
    return "round(EXTRACT(epoch FROM finished_at - started_at) * 1000)"


@compiles(StepDurationMs, "sqlite")
def _step_duration_ms_sqlite(element: StepDurationMs, compiler: Any, **kw: Any) -> str:
    # Whole seconds from the text without its fraction: strftime rounds a time to the
    # millisecond first, so 42.9996 s would count as 43 s and the duration lose a second.
    return (
        "CAST(round(((strftime('%s', substr(finished_at, 1, 19))"
        " - strftime('%s', substr(started_at, 1, 19))) * 1000000"
        " + (substr(finished_at, 21, 6) - substr(started_at, 21, 6))) / 1000.0) AS INTEGER)"
    )


class WorkflowStep(Base):
    __tablename__ = "workflow_steps"
    __table_args__ = (
        UniqueConstraint("workflow_id", "name"),
        # Monitoring: steps by start time (short ranges), and completed steps in duration order
        # per step, which long-range percentiles read instead of sorting (core.monitoring).
        Index("ix_workflow_steps_started_at", "started_at"),
        Index(
            "ix_workflow_steps_completed_duration",
            "name",
            "duration_ms",
            "started_at",
            postgresql_where=text("status = 'completed'"),
            sqlite_where=text("status = 'completed'"),
        ),
        # The failed step of each failed run (failure reasons), without visiting the others.
        Index(
            "ix_workflow_steps_failed",
            "workflow_id",
            "name",
            postgresql_where=text("status = 'failed'"),
            sqlite_where=text("status = 'failed'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    workflow_id: Mapped[str] = mapped_column(ForeignKey("workflows.id"))
    name: Mapped[str] = mapped_column(String(32))
    position: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default=StepStatus.PENDING.value)
    progress: Mapped[int] = mapped_column(Integer, default=0)
    message: Mapped[str] = mapped_column(Text, default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Write-ahead: a paid provider job's id is saved here before we wait on it.
    provider_request_id: Mapped[str | None] = mapped_column(String(200))
    output: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error_message: Mapped[str | None] = mapped_column(Text)
    error_category: Mapped[str | None] = mapped_column(String(32))
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    deadline_at: Mapped[datetime | None] = mapped_column()
    worker_id: Mapped[str | None] = mapped_column(String(128))  # host:pid that last started it
    # Kept by the database itself (a generated column): writers never set it.
    duration_ms: Mapped[int | None] = mapped_column(
        Integer, Computed(StepDurationMs(), persisted=True)
    )

    workflow: Mapped[Workflow] = relationship(back_populates="steps")

    def __repr__(self) -> str:
        return f"WorkflowStep({self.workflow_id}/{self.name}: {self.status} {self.progress}%)"


class ApiCall(Base):
    """One provider call attempt; the monitoring page reads these."""

    __tablename__ = "api_calls"
    __table_args__ = (
        Index("ix_api_calls_started_at", "started_at"),
        Index("ix_api_calls_workflow", "workflow_id"),
        # Monitoring: calls per provider and operation in latency order (long-range percentiles,
        # the provider filter; INCLUDE makes the per-provider counts an index-only scan on
        # Postgres), and the few attempts that did not end ok.
        Index(
            "ix_api_calls_provider_operation_duration",
            "provider",
            "operation",
            "duration_ms",
            "started_at",
            postgresql_include=["attempt", "outcome", "cost_usd"],
        ),
        # Monitoring (cost of a delivered video): the list price per run, from the few priced
        # calls only.
        Index(
            "ix_api_calls_priced",
            "started_at",
            "workflow_id",
            "cost_usd",
            postgresql_where=text("cost_usd > 0"),
            sqlite_where=text("cost_usd > 0"),
        ),
        Index(
            "ix_api_calls_not_ok_started_at",
            "started_at",
            postgresql_where=text("outcome <> 'ok'"),
            sqlite_where=text("outcome <> 'ok'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    workflow_id: Mapped[str | None] = mapped_column(ForeignKey("workflows.id"))
    step: Mapped[str | None] = mapped_column(String(32))
    provider: Mapped[str] = mapped_column(String(40))
    operation: Mapped[str] = mapped_column(String(40))
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    started_at: Mapped[datetime] = mapped_column()
    duration_ms: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(16))  # ok | transient | permanent | error
    status_code: Mapped[int | None] = mapped_column(Integer)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    cost_usd: Mapped[Decimal] = mapped_column(Numeric(12, 4), default=Decimal(0))

    def __repr__(self) -> str:
        return f"ApiCall({self.provider}.{self.operation} #{self.attempt}: {self.outcome})"


class Asset(Base):
    __tablename__ = "assets"
    __table_args__ = (
        UniqueConstraint("workflow_id", "kind"),
        Index("ix_assets_user_created", "user_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    workflow_id: Mapped[str] = mapped_column(ForeignKey("workflows.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    kind: Mapped[str] = mapped_column(String(16))  # image | video
    storage_backend: Mapped[str] = mapped_column(String(16))
    storage_key: Mapped[str] = mapped_column(String(500))
    content_type: Mapped[str] = mapped_column(String(100))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    duration_s: Mapped[float | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    def __repr__(self) -> str:
        return f"Asset(id={self.id}, {self.kind} {self.storage_key!r})"


class Setting(Base):
    """Runtime-editable settings (credit costs); every change names who made it."""

    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[dict[str, Any]] = mapped_column()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(320), default="system")

    def __repr__(self) -> str:
        return f"Setting({self.key!r})"


class Template(Base):
    """A user's named preset of prompts and config for the create page (the seed's "templates")."""

    __tablename__ = "templates"
    __table_args__ = (UniqueConstraint("user_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    name: Mapped[str] = mapped_column(String(120))
    # {"request": <the validated request, seed field names>, "builder": <prompt builder choices>}
    payload: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    def __repr__(self) -> str:
        return f"Template(id={self.id}, name={self.name!r})"


class AuditEvent(Base):
    """Append-only record of admin actions that leave no ledger row: credit-cost edits (old and
    new values) and user management. Credit moves are audited by the ledger itself."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_at", "at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(320))  # the acting user's email, or "system"
    action: Mapped[str] = mapped_column(String(40))  # e.g. credit_costs.update, user.role
    target: Mapped[str] = mapped_column(String(200))  # e.g. settings:credit_costs, user:42
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)

    def __repr__(self) -> str:
        return f"AuditEvent(id={self.id}, {self.action} {self.target} by {self.actor})"


class SignInSession(Base):
    """A browser's signed-in session. Its id is the SHA-256 of the random token the browser
    holds (in a signed cookie), so the table alone cannot sign anyone in."""

    __tablename__ = "sign_in_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column()

    def __repr__(self) -> str:
        return f"SignInSession(user={self.user_id}, revoked={self.revoked_at is not None})"


class ApiToken(Base):
    """A user's bearer token for the HTTP API. Only the secret's SHA-256 is stored (core.tokens);
    the prefix is the secret's first characters, shown in lists to tell tokens apart."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(String(120), default="")
    prefix: Mapped[str] = mapped_column(String(8), index=True)
    secret_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column()
    expires_at: Mapped[datetime | None] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column()

    def __repr__(self) -> str:
        return f"ApiToken(id={self.id}, user={self.user_id}, prefix={self.prefix!r})"


class Budget(Base):
    """A monthly credit cap on one scope: a user, a project, or the whole team. The row holds
    only the limit: what was spent is read from the ledger (core.budgets)."""

    __tablename__ = "budgets"

    id: Mapped[int] = mapped_column(primary_key=True)
    # "user:<id>", "project:<id>" or "team": one budget per scope, with no NULL in the key so
    # the unique constraint holds on both databases.
    scope_key: Mapped[str] = mapped_column(String(40), unique=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    project_id: Mapped[int | None] = mapped_column(ForeignKey("projects.id"))
    monthly_limit: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(320))

    def __repr__(self) -> str:
        return f"Budget({self.scope_key}: {self.monthly_limit}/month)"


class BudgetAlert(Base):
    """Spending crossed a threshold of a budget in a period: one row per (scope, period,
    threshold, limit), enforced by the unique key, written in the transaction of the
    reservation that crossed it. `emailed_at` is the email outbox's mark."""

    __tablename__ = "budget_alerts"

    id: Mapped[int] = mapped_column(primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(120), unique=True)
    scope_key: Mapped[str] = mapped_column(String(40))
    period: Mapped[str] = mapped_column(String(7))  # "2026-11": a calendar month in UTC
    threshold: Mapped[int] = mapped_column(Integer)  # percent of the limit
    monthly_limit: Mapped[int] = mapped_column(Integer)
    spent: Mapped[int] = mapped_column(Integer)  # right after the crossing reservation
    workflow_id: Mapped[str] = mapped_column(ForeignKey("workflows.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    emailed_at: Mapped[datetime | None] = mapped_column(index=True)

    def __repr__(self) -> str:
        return f"BudgetAlert({self.scope_key} {self.period} {self.threshold}%)"


class Notification(Base):
    """One entry of a user's inbox, written in the transaction of the event it reports; the
    unique key makes a retried event write it once."""

    __tablename__ = "notifications"
    __table_args__ = (Index("ix_notifications_user_read", "user_id", "read_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    kind: Mapped[str] = mapped_column(String(24))
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text, default="")
    link: Mapped[str] = mapped_column(String(100), default="")  # "run:<id>" or "ledger:<id>"
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    read_at: Mapped[datetime | None] = mapped_column()

    def __repr__(self) -> str:
        return f"Notification(id={self.id}, user={self.user_id}, {self.kind})"


class WebhookDelivery(Base):
    """One webhook message in the durable outbox (core.webhooks): written in the transaction of
    the state change it tells of, then sent (and retried) by the delivery loop. The id is the
    message's stable `webhook-id`."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_status_next", "status", "next_attempt_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    workflow_id: Mapped[str] = mapped_column(ForeignKey("workflows.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    url: Mapped[str] = mapped_column(String(2000))
    scope: Mapped[str] = mapped_column(String(8))  # run (the run's webhookUrl) | global
    event: Mapped[str] = mapped_column(String(16))  # started | step | completed
    payload: Mapped[dict[str, Any]] = mapped_column()
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(300))
    # When the loop may take it next; a claim moves it forward by the lease, so a sender that
    # dies mid-attempt leaves the row due again once its lease runs out.
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_attempt_at: Mapped[datetime | None] = mapped_column()
    delivered_at: Mapped[datetime | None] = mapped_column()

    def __repr__(self) -> str:
        return f"WebhookDelivery({self.id}, {self.event} {self.status})"


class WebhookSecret(Base):
    """A user's Standard Webhooks signing secret (`whsec_...`). Kept in clear: signing needs it.
    After a rotation the previous one still signs for a while, so receivers can switch over."""

    __tablename__ = "webhook_secrets"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    secret: Mapped[str] = mapped_column(String(100))
    previous_secret: Mapped[str | None] = mapped_column(String(100))
    rotated_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    def __repr__(self) -> str:
        return f"WebhookSecret(user={self.user_id})"


class IdempotencyKey(Base):
    """An API client's `Idempotency-Key`, tied to the run it started (core.idempotency). The
    primary key makes two racing starts with one key a single run: the second insert fails and
    its whole transaction, run and reservation included, rolls back."""

    __tablename__ = "idempotency_keys"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    workflow_id: Mapped[str] = mapped_column(ForeignKey("workflows.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    def __repr__(self) -> str:
        return f"IdempotencyKey(user={self.user_id}, key={self.key!r}, run={self.workflow_id})"


class RunEvent(Base):
    """One entry of a run's append-only event log (core.run_events), written in the transaction
    of the state change it records. `seq` numbers a run's events 1, 2, 3...: the stream's ids."""

    __tablename__ = "run_events"
    __table_args__ = (UniqueConstraint("workflow_id", "seq"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    workflow_id: Mapped[str] = mapped_column(ForeignKey("workflows.id"))
    seq: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))  # run | step | final (core.run_events)
    payload: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    def __repr__(self) -> str:
        return f"RunEvent(workflow={self.workflow_id}, seq={self.seq}, kind={self.kind})"


class WorkerBeat(Base):
    """A process that runs workflows (a Celery worker, the app, the CLI), as its housekeeping
    last reported it: `python -m core workers` lists those seen recently."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)  # host:pid
    host: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(16))  # executor: threads | celery
    runs_in_hand: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)

    def __repr__(self) -> str:
        return f"WorkerBeat({self.id}, {self.runs_in_hand} runs)"


# ---------------------------------------------------------------------------------------------
# Monitoring rollups of closed days (core.views.rollup): derived from the tables above, filled
# when the monitoring page first reads a closed day, never by the engine.


class RollupDay(Base):
    """A closed UTC day a rollup holds (`kind`: runs | ledger), and when it was rolled up."""

    __tablename__ = "rollup_days"

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    day: Mapped[datetime] = mapped_column(primary_key=True)
    rolled_at: Mapped[datetime] = mapped_column()


class RunDayRollup(Base):
    """The finished runs created on a day, summed per user, project, model and status: what
    the cost of a delivered video reads instead of every run."""

    __tablename__ = "rollup_run_days"
    __table_args__ = (Index("ix_rollup_run_days_day", "day"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    day: Mapped[datetime] = mapped_column()
    user_id: Mapped[int] = mapped_column(Integer)
    project_id: Mapped[int | None] = mapped_column(Integer)
    model: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16))
    runs: Mapped[int] = mapped_column(Integer)
    reserved: Mapped[int] = mapped_column(BigInteger)
    refunded: Mapped[int] = mapped_column(BigInteger)
    released: Mapped[int] = mapped_column(BigInteger)
    net: Mapped[int] = mapped_column(BigInteger)
    usd: Mapped[Decimal] = mapped_column(Numeric(16, 4))


class LedgerDayRollup(Base):
    """A day's run ledger rows (reserve, refund, release), summed per user and the run's
    project: what credit usage and the credit totals read instead of every row."""

    __tablename__ = "rollup_ledger_days"
    __table_args__ = (Index("ix_rollup_ledger_days_day", "day"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    day: Mapped[datetime] = mapped_column()
    user_id: Mapped[int] = mapped_column(Integer)
    workflow_id_set: Mapped[bool] = mapped_column(Boolean)  # False: rows of no run
    project_id: Mapped[int | None] = mapped_column(Integer)
    reserved: Mapped[int] = mapped_column(BigInteger)
    refunded: Mapped[int] = mapped_column(BigInteger)
    released: Mapped[int] = mapped_column(BigInteger)


class CallDayRollup(Base):
    """A day's provider calls (by start), counted per provider, operation and latency bucket
    (core.views.rollup.duration_bucket): the provider panel's counts and list price, and where
    its exact latency percentiles lie."""

    __tablename__ = "rollup_call_days"
    __table_args__ = (Index("ix_rollup_call_days_day", "day"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    day: Mapped[datetime] = mapped_column()
    provider: Mapped[str] = mapped_column(String(40))
    operation: Mapped[str] = mapped_column(String(40))
    bucket_ms: Mapped[int] = mapped_column(Integer)  # the bucket's lower edge
    calls: Mapped[int] = mapped_column(Integer)
    first_attempts: Mapped[int] = mapped_column(Integer)
    retries: Mapped[int] = mapped_column(Integer)
    errors: Mapped[int] = mapped_column(Integer)
    transient: Mapped[int] = mapped_column(Integer)
    cost: Mapped[Decimal | None] = mapped_column(Numeric(16, 4))  # None: no priced call


class StepDayRollup(Base):
    """A day's completed steps (by start), per step, histogram bin and duration bucket
    (core.views.rollup): the step panel's counts, sums, maxima and histogram, and where its
    exact percentiles lie."""

    __tablename__ = "rollup_step_days"
    __table_args__ = (Index("ix_rollup_step_days_day", "day"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    day: Mapped[datetime] = mapped_column()
    name: Mapped[str] = mapped_column(String(32))
    bin: Mapped[int] = mapped_column(Integer)
    bucket_ms: Mapped[int] = mapped_column(Integer)  # the duration bucket's lower edge
    count: Mapped[int] = mapped_column(Integer)
    sum_ms: Mapped[int] = mapped_column(BigInteger)
    max_ms: Mapped[int] = mapped_column(Integer)
