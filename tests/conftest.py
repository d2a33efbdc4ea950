"""Shared fixtures: every database test runs on a SQLite file and, when TEST_DATABASE_URL is set,
on Postgres. With REQUIRE_POSTGRES=1 and no reachable server the run fails instead of skipping."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from hypothesis import settings as hypothesis_settings
from sqlalchemy import create_engine, text

from core.auth import UserView, create_user
from core.config import Settings
from core.db import Database, scratch_database, upgrade_schema
from core.executor import InlineExecutor
from core.models import Base
from core.runtime import Runtime
from tests.helpers import ENGINE_ENV

# Timing belongs in benchmarks: Hypothesis's per-example deadline would make a cold first call
# (imports, a first connection) fail a correctness test.
hypothesis_settings.register_profile("reelforge", deadline=None)
hypothesis_settings.load_profile("reelforge")


@pytest.fixture(autouse=True)
def _hermetic_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's real keys must never turn a test into a paid call."""
    for name in ENGINE_ENV:
        monkeypatch.delenv(name, raising=False)


# -- Postgres ---------------------------------------------------------------------------------


def _postgres_required() -> bool:
    return os.environ.get("REQUIRE_POSTGRES") == "1"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A scratch database created for this test session on TEST_DATABASE_URL's server."""
    base = os.environ.get("TEST_DATABASE_URL")
    if not base:
        if _postgres_required():
            pytest.fail("REQUIRE_POSTGRES=1 but TEST_DATABASE_URL is not set")
        pytest.skip("TEST_DATABASE_URL not set")  # deselected before running; see below
    with ExitStack() as scratch:
        try:
            url = scratch.enter_context(scratch_database(base, prefix="reelforge_test"))
        except Exception as exc:
            pytest.fail(f"Postgres at {base} is not usable: {exc}")
        upgrade_schema(url)
        yield url


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without a Postgres URL, the Postgres variants are deselected (reported, never 'passed')."""
    if os.environ.get("TEST_DATABASE_URL") or _postgres_required():
        return
    keep = [item for item in items if "[postgres" not in item.nodeid]
    dropped = [item for item in items if "[postgres" in item.nodeid]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


def pytest_report_header(config: pytest.Config) -> str:
    url = os.environ.get("TEST_DATABASE_URL")
    return f"databases: sqlite + postgres ({url})" if url else "databases: sqlite only"


# -- Redis ------------------------------------------------------------------------------------


def _redis_required() -> bool:
    return os.environ.get("REQUIRE_REDIS") == "1"


@pytest.fixture(scope="session")
def redis_url() -> str:
    """TEST_REDIS_URL (a database number of its own on a shared server): the Celery tests skip
    without it, and fail under REQUIRE_REDIS=1. Each parallel test process (pytest-xdist) takes
    the next database number, so two processes' workers never consume each other's messages."""
    url = os.environ.get("TEST_REDIS_URL")
    if not url:
        if _redis_required():
            pytest.fail("REQUIRE_REDIS=1 but TEST_REDIS_URL is not set")
        pytest.skip("TEST_REDIS_URL not set")
    url = _per_test_process(url)
    import redis

    try:
        redis.Redis.from_url(url).ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis at {url} is not usable: {exc}")
    return url


def _per_test_process(url: str) -> str:
    parts = urlsplit(url)
    base = int(parts.path.strip("/") or 0)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")  # gw0, gw1, ... (gw0 alone: no xdist)
    return urlunsplit(parts._replace(path=f"/{base + int(worker.removeprefix('gw'))}"))


# -- SQLite -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test (faster than migrating each time)."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade_schema(f"sqlite:///{path}")
    return path


# -- The database a test runs on --------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return _fresh_database(request, tmp_path, request.param)


@pytest.fixture
def primary_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """One database for the slowest tests: Postgres when configured (as in CI), else SQLite."""
    postgres = os.environ.get("TEST_DATABASE_URL") or _postgres_required()
    return _fresh_database(request, tmp_path, "postgres" if postgres else "sqlite")


def _fresh_database(request: pytest.FixtureRequest, tmp_path: Path, kind: str) -> str:
    if kind == "sqlite":
        path = tmp_path / "reelforge.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    url = request.getfixturevalue("postgres_url")
    _truncate(url)
    return url


def _truncate(url: str) -> None:
    engine = create_engine(url)
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database.from_url(database_url)
    yield database
    database.dispose()


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    """Offline, instant, zero-wait settings: tests wait on conditions, never on sleeps."""
    return Settings(
        _env_file=None,
        data_dir=tmp_path / "data",
        database_url=database_url,
        offline_latency_s=0,
        retry_initial_wait_s=0,
        retry_max_wait_s=0,
        poll_interval_s=0.01,
        progress_min_interval_s=0,
        worker_threads=4,
    )


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    """An engine that runs each workflow synchronously inside `start_workflow`."""
    engine = Runtime(settings, upgrade=False, executor=InlineExecutor())
    yield engine
    engine.shutdown()


@pytest.fixture
def make_user(db: Database):
    def make(email: str | None = None, credits: int = 100, **kwargs) -> UserView:
        with db.begin() as session:
            return create_user(
                session,
                email or f"user-{uuid.uuid4().hex[:8]}@example.com",
                starting_credits=credits,
                **kwargs,
            )

    return make


@pytest.fixture(params=["postgres"])
def postgres_only_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """For tests of Postgres behaviour itself (deselected, like every [postgres] test, when no
    server is configured)."""
    return _fresh_database(request, tmp_path, "postgres")
