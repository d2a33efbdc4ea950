"""Health checks: the database (and its schema version), a storage write/read/delete probe, and
each provider's credentials through its cheapest call; each with its latency. And readiness for a
process supervisor or Kubernetes: only what a process cannot work without (the database, and the
broker where runs go through it), cheap enough to ask every few seconds."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from kombu import Connection
from sqlalchemy import text

from core.config import Settings
from core.db import Database, alembic_config
from core.errors import ProviderConfigError, ReelforgeError
from core.providers.base import Providers
from core.runtime import Runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    latency_ms: float
    detail: str


def _timed(name: str, probe: Callable[[], str]) -> Check:
    started = time.perf_counter()
    try:
        detail, ok = probe(), True
    except ReelforgeError as exc:  # our own errors already say what to check
        detail, ok = str(exc), False
    except Exception as exc:  # noqa: BLE001 - a health check reports every failure as "down"
        detail, ok = f"{type(exc).__name__}: {exc}", False
    return Check(name, ok, (time.perf_counter() - started) * 1000, detail)


def check_database(db: Database, url: str) -> str:
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    with db.engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    if current != head:
        raise RuntimeError(
            f"schema at {current}, code expects {head}: run `python -m core db upgrade`"
        )
    return f"{db.dialect}, schema {current}"


def check_storage(providers: Providers) -> str:
    storage = providers.storage
    key = f"health/{uuid.uuid4().hex}.txt"
    payload = b"reelforge health probe"
    storage.put(key, payload, "text/plain")
    try:
        if storage.get(key) != payload:
            raise RuntimeError("read back different bytes than written")
    finally:
        storage.delete(key)
    return f"{storage.name}: write/read/delete ok"


# A probe answers within its own timeout (Kubernetes' default is 1 s): a broker that does not
# answer in this long counts as down.
_BROKER_TIMEOUT_S = 0.8


def ping_database(db: Database) -> str:
    with db.engine.connect() as connection:
        connection.execute(text("SELECT 1"))
    return "ok"


def ping_broker(url: str) -> str:
    options = {"socket_timeout": _BROKER_TIMEOUT_S, "socket_connect_timeout": _BROKER_TIMEOUT_S}
    with Connection(url, connect_timeout=_BROKER_TIMEOUT_S, transport_options=options) as broker:
        broker.ensure_connection(max_retries=1, interval_start=0, interval_step=0)
    return "ok"


def readiness(db: Database, broker_url: str | None) -> list[Check]:
    """The database, and the broker when `broker_url` is given (runs go through it)."""
    checks = [_timed("database", lambda: ping_database(db))]
    if broker_url is not None:
        checks.append(_timed("broker", lambda: ping_broker(broker_url)))
    for check in checks:
        if not check.ok:
            log.warning("Readiness - %s down: %s", check.name, check.detail)
    return checks


def readiness_body(checks: list[Check]) -> dict[str, object]:
    """The probes' JSON: each check's name and state, never a detail (the probes answer anyone;
    the details go to the log)."""
    return {
        "ready": all(c.ok for c in checks),
        "checks": {c.name: "ok" if c.ok else "down" for c in checks},
        "failed": [c.name for c in checks if not c.ok],
    }


def check_all(runtime: Runtime) -> list[Check]:
    """Every check, on the very database and providers the running engine uses."""
    url = runtime.settings.resolved_database_url
    checks = [_timed("database", lambda: check_database(runtime.db, url))]
    providers = runtime.providers
    checks.append(_timed("storage probe", lambda: check_storage(providers)))
    capabilities = {
        "image provider": providers.image,
        "video provider": providers.video,
        "moderation provider": providers.moderator,
        "storage credentials": providers.storage,
    }
    checks.extend(_timed(name, port.check) for name, port in capabilities.items())
    return checks


def check_settings(settings: Settings) -> list[Check]:
    """`python -m core health`: compose the engine from settings as a process would (without
    upgrading the schema, which is what the database check looks at), then check it. An engine
    that cannot be composed (a provider forced on without its key) is reported, not raised."""
    try:
        runtime = Runtime(settings, upgrade=False)
    except ProviderConfigError as exc:
        db = Database.from_url(settings.resolved_database_url)
        try:
            url = settings.resolved_database_url
            return [
                _timed("database", lambda: check_database(db, url)),
                Check("providers", False, 0.0, str(exc)),
            ]
        finally:
            db.dispose()
    try:
        return check_all(runtime)
    finally:
        runtime.shutdown()
