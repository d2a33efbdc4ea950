"""Health checks: the database (and its schema version), a storage write/read/delete probe, and
each provider's credentials through its cheapest call; each with its latency."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from core.config import Settings
from core.db import Database, alembic_config
from core.errors import ProviderConfigError, ReelforgeError
from core.providers.base import Providers
from core.runtime import Runtime


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
