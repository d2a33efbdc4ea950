"""Webhooks as Standard Webhooks specifies them, through a durable outbox.

A state change calls `enqueue` inside its own transaction: one `webhook_deliveries` row per
destination that wants the event (the run's own webhookUrl, filtered by its webhookEvents, and
the installation's WEBHOOK_URL, which hears everything). So an event is never sent for a change
that rolled back, nor lost for one that committed. The delivery loop (core.webhook_sender) claims
due rows, signs them at send time and records each attempt here; the row's id is the message's
`webhook-id`, the same on every attempt.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import httpx
from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.auth import UserView
from core.clock import utcnow
from core.errors import NotFoundError, RequestValidationError
from core.models import Setting, WebhookDelivery, WebhookSecret, Workflow, view_of
from core.schemas import WorkflowRequest

SECRET_PREFIX = "whsec_"
GLOBAL_SECRET_SETTING_KEY = "webhook_secret"
# After a rotation the old secret signs too for this long (a second signature in the header),
# so a receiver can switch secrets without refusing a single message.
ROTATION_GRACE = timedelta(hours=24)
LAST_ERROR_MAX_CHARS = 300


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class Scope(StrEnum):
    """Whose destination a delivery goes to, and so whose secret signs it."""

    RUN = "run"  # the run's own webhookUrl: its owner's secret
    GLOBAL = "global"  # the installation's WEBHOOK_URL: the global secret


# The `type` of each event's payload (Standard Webhooks: dot-separated, [a-zA-Z0-9_]).
EVENT_TYPES = {
    "started": "workflow.started",
    "step": "workflow.step",
    "completed": "workflow.completed",
    # A budget crossing 80% or 100% (core.budgets): the installation's own webhook hears it,
    # never a run's (which subscribes to that run's events only).
    "budget": "budget.alert",
}


@dataclass(frozen=True)
class DeliveryView:
    id: str
    workflow_id: str
    url: str
    scope: str
    event: str
    payload: dict[str, Any]
    status: str
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: datetime
    created_at: datetime
    last_attempt_at: datetime | None
    delivered_at: datetime | None


# ---------------------------------------------------------------------------------------------
# Writing events (inside the state change's transaction)


@dataclass(frozen=True)
class Destination:
    """Where a run's events go: its own webhookUrl (the events it subscribed to) or the
    installation's WEBHOOK_URL (`events` None: every event)."""

    scope: Scope
    url: str
    events: frozenset[str] | None


def destinations_of(request: WorkflowRequest, global_url: str | None) -> tuple[Destination, ...]:
    found = []
    if request.webhook_url:
        found.append(Destination(Scope.RUN, request.webhook_url, frozenset(request.webhook_events)))
    if global_url:
        found.append(Destination(Scope.GLOBAL, global_url, None))
    return tuple(found)


def deliveries(
    destinations: Sequence[Destination],
    *,
    workflow_id: str,
    user_id: int,
    event: str,
    data: dict[str, Any],
    now: datetime,
) -> list[dict[str, Any]]:
    """The `webhook_deliveries` rows of one event of a run: one per destination that wants it."""
    payload = {
        "type": EVENT_TYPES[event],
        "timestamp": now.isoformat().replace("+00:00", "Z"),
        "data": {"workflowId": workflow_id, **data},
    }
    return [
        {
            "id": f"msg_{uuid.uuid4().hex}",
            "workflow_id": workflow_id,
            "user_id": user_id,
            "url": destination.url,
            "scope": destination.scope.value,
            "event": event,
            "payload": payload,
            "status": DeliveryStatus.PENDING.value,
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
        }
        for destination in destinations
        if destination.events is None or event in destination.events
    ]


def enqueue(session: Session, workflow_id: str, event: str, data: dict[str, Any]) -> None:
    """Queue `event` ("started", "step" or "completed") of a run for every destination that
    wants it. The caller's transaction holds the state change; these rows commit or roll back
    with it. (A runner holding the run writes the same rows, from `deliveries`, in its own
    one-statement writes: core.run_writes.)"""
    run = session.execute(
        select(Workflow.user_id, Workflow.request, Workflow.global_webhook_url).where(
            Workflow.id == workflow_id
        )
    ).one()
    request = WorkflowRequest.model_validate(run.request)
    rows = deliveries(
        destinations_of(request, run.global_webhook_url),
        workflow_id=workflow_id,
        user_id=run.user_id,
        event=event,
        data=data,
        now=utcnow(),
    )
    if rows:
        session.execute(insert(WebhookDelivery.__table__), rows)


# ---------------------------------------------------------------------------------------------
# The loop's side: claim due rows, record attempts


@dataclass(frozen=True)
class Claimed:
    """A delivery taken for one attempt (`attempt` counts this one)."""

    id: str
    user_id: int
    url: str
    scope: Scope
    payload: dict[str, Any]
    attempt: int
    created_at: datetime


def any_due(session: Session) -> bool:
    """Whether some delivery is due: a read, so an idle loop never takes SQLite's write lock."""
    due = select(WebhookDelivery.id).where(
        WebhookDelivery.status == DeliveryStatus.PENDING.value,
        WebhookDelivery.next_attempt_at <= utcnow(),
    )
    return session.execute(due.limit(1)).first() is not None


def claim_due(session: Session, *, lease_s: float, limit: int) -> list[Claimed]:
    """Take up to `limit` due deliveries for one attempt each. The claim pushes next_attempt_at
    out by the lease: a sender that dies before recording the result leaves the row due again
    when the lease ends, never lost. Postgres claimers skip each other's locked rows; SQLite's
    write transactions are serial anyway."""
    now = utcnow()
    query = (
        select(WebhookDelivery)
        .where(
            WebhookDelivery.status == DeliveryStatus.PENDING.value,
            WebhookDelivery.next_attempt_at <= now,
        )
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    rows = session.scalars(query).all()
    claimed = []
    for row in rows:
        row.attempts += 1
        row.next_attempt_at = now + timedelta(seconds=lease_s)
        row.last_attempt_at = now
        claimed.append(
            Claimed(
                row.id,
                row.user_id,
                row.url,
                Scope(row.scope),
                dict(row.payload),
                row.attempts,
                row.created_at,
            )
        )
    session.flush()
    return claimed


@dataclass(frozen=True)
class Attempt:
    """What one attempt came to: the receiver's status code, or the error before one."""

    status_code: int | None
    error: str | None = None
    retry_after_s: float | None = None

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def after_attempt(
    attempt: Attempt, *, created_at: datetime, now: datetime, wait_s: float, max_age_s: float
) -> tuple[DeliveryStatus, datetime]:
    """The delivery's status and next try after an attempt: 2xx delivered; 410 Gone failed (the
    receiver asked us to stop); otherwise again after `wait_s` (or the receiver's Retry-After if
    longer), unless that is past the message's age limit."""
    if attempt.delivered:
        return DeliveryStatus.DELIVERED, now
    if attempt.status_code == 410:
        return DeliveryStatus.FAILED, now
    next_at = now + timedelta(seconds=max(wait_s, attempt.retry_after_s or 0))
    if next_at > created_at + timedelta(seconds=max_age_s):
        return DeliveryStatus.FAILED, now
    return DeliveryStatus.PENDING, next_at


def record_attempt(
    session: Session, claimed: Claimed, attempt: Attempt, status: DeliveryStatus, next_at: datetime
) -> bool:
    """Write an attempt's outcome. Fenced by the attempt number: a sender whose lease ran out
    (and whose row another sender took) records nothing. True when written."""
    error = attempt.error[:LAST_ERROR_MAX_CHARS] if attempt.error else None
    result = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == claimed.id,
            WebhookDelivery.attempts == claimed.attempt,
            WebhookDelivery.status == DeliveryStatus.PENDING.value,
        )
        .values(
            status=status.value,
            next_attempt_at=next_at,
            last_status_code=attempt.status_code,
            last_error=error,
            delivered_at=utcnow() if status is DeliveryStatus.DELIVERED else None,
        ),
        execution_options={"synchronize_session": False},
    )
    return bool(result.rowcount)


# ---------------------------------------------------------------------------------------------
# Reading and redelivering (the watch page and the API)


def deliveries_for(session: Session, workflow_id: str, viewer: UserView) -> list[DeliveryView]:
    """A run's deliveries, oldest first. Deliveries to the installation's WEBHOOK_URL are the
    operators' business: only admins see them."""
    query = select(WebhookDelivery).where(WebhookDelivery.workflow_id == workflow_id)
    if not viewer.is_admin:
        query = query.where(WebhookDelivery.scope == Scope.RUN.value)
    rows = session.scalars(query.order_by(WebhookDelivery.created_at, WebhookDelivery.id))
    return [view_of(DeliveryView, row) for row in rows]


def redeliver(
    session: Session, workflow_id: str, delivery_id: str, viewer: UserView
) -> DeliveryView:
    """Queue one more attempt of a delivery now, with the same webhook-id. The caller has
    checked the viewer may see the run; a delivery they may not see looks missing."""
    visible = {d.id for d in deliveries_for(session, workflow_id, viewer)}
    if delivery_id not in visible:
        raise NotFoundError(f"webhook delivery {delivery_id} not found")
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id)
        .values(status=DeliveryStatus.PENDING.value, next_attempt_at=utcnow(), delivered_at=None),
        execution_options={"synchronize_session": False},
    )
    return view_of(
        DeliveryView, session.get_one(WebhookDelivery, delivery_id, populate_existing=True)
    )


# ---------------------------------------------------------------------------------------------
# Secrets and signatures


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def signing_secret(session: Session, user_id: int) -> str:
    """The user's signing secret, made on first need (in a write transaction). Two first needs
    at once: one insert wins, the other reads it."""
    row = session.get(WebhookSecret, user_id)
    if row is None:
        try:
            with session.begin_nested():
                session.add(WebhookSecret(user_id=user_id, secret=new_secret()))
        except IntegrityError:
            pass
        row = session.get_one(WebhookSecret, user_id, populate_existing=True)
    return row.secret


def rotate_secret(session: Session, user_id: int) -> str:
    """A new secret for the user; the old one keeps signing alongside for ROTATION_GRACE."""
    current = signing_secret(session, user_id)
    fresh = new_secret()
    session.execute(
        update(WebhookSecret)
        .where(WebhookSecret.user_id == user_id)
        .values(secret=fresh, previous_secret=current, rotated_at=utcnow()),
        execution_options={"synchronize_session": False},
    )
    session.expire_all()
    return fresh


def user_signing_secrets(session: Session, user_id: int) -> list[str]:
    """The secrets that sign a user's deliveries now: the current one, and the previous one
    during its grace period."""
    current = signing_secret(session, user_id)
    row = session.get_one(WebhookSecret, user_id)
    recent = row.rotated_at is not None and utcnow() - row.rotated_at < ROTATION_GRACE
    return [current, row.previous_secret] if recent and row.previous_secret else [current]


def global_signing_secret(session: Session, configured: str | None) -> str:
    """WEBHOOK_SECRET when set; otherwise one generated once and kept in the settings table,
    shared by every process of the installation."""
    if configured:
        return configured
    row = session.get(Setting, GLOBAL_SECRET_SETTING_KEY)
    if row is None:
        try:
            with session.begin_nested():
                session.add(Setting(key=GLOBAL_SECRET_SETTING_KEY, value={"secret": new_secret()}))
        except IntegrityError:
            pass
        row = session.get_one(Setting, GLOBAL_SECRET_SETTING_KEY, populate_existing=True)
    return row.value["secret"]


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """One `v1,<base64 HMAC-SHA256>` signature of "{msg_id}.{timestamp}.{body}"."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    content = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(
    secrets_: Sequence[str], msg_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """The three Standard Webhooks headers; one signature per secret, space-separated."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(s, msg_id, timestamp, body) for s in secrets_),
    }


# ---------------------------------------------------------------------------------------------
# Where a webhook may go


class UnsafeDestinationError(ValueError):
    """The webhook's host resolves to an address webhooks may not reach (or to none)."""


def resolve_destination(host: str, port: int, *, allow_private: bool) -> list[str]:
    """The addresses `host` resolves to, all public unless `allow_private`; raises
    UnsafeDestinationError naming the first that is not. Checked at start and again before
    every attempt, against the very address the attempt then connects to (DNS rebinding)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise UnsafeDestinationError(f"its host {host} does not resolve ({exc})") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not allow_private:
        for address in addresses:
            kind = non_public_kind(ipaddress.ip_address(address.split("%")[0]))
            if kind:
                raise UnsafeDestinationError(
                    f"points at {address}, a {kind} address; webhooks go to public addresses only"
                )
    return addresses


def non_public_kind(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """What makes `ip` unreachable for webhooks ("loopback", "private", ...), or None."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    # Most specific first: Python counts link-local, unspecified and reserved as private too.
    for kind in ("loopback", "link_local", "unspecified", "multicast", "reserved", "private"):
        if getattr(ip, f"is_{kind}"):
            return kind.replace("_", "-")
    return None if ip.is_global else "non-public"


def check_webhook_url(url: str, *, allow_private: bool) -> None:
    """Refuse a run's webhookUrl whose host is not a public address (RequestValidationError
    naming the field). With `allow_private` any host goes: it is looked up at delivery."""
    if allow_private:
        return
    parsed = httpx.URL(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        resolve_destination(parsed.host, port, allow_private=allow_private)
    except UnsafeDestinationError as exc:
        raise RequestValidationError({"webhookUrl": str(exc)}) from None
