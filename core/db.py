"""Engine and session factories, and schema upgrades through Alembic.

SQLite (the embedded default) is shared by many threads, so: WAL journal, a busy timeout,
foreign keys on, and write transactions opened with BEGIN IMMEDIATE. A deferred transaction that
reads and then writes can fail at once with "database is locked" when another writer got in first;
IMMEDIATE takes the write lock up front and waits for it instead. Reads stay deferred and never
block in WAL mode.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import Enum
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, Row, create_engine, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_SQLITE_BUSY_TIMEOUT_MS = 30_000


def make_engine(url: str, *, pool_size: int = 10) -> Engine:
    """Build an engine for `url`; on SQLite, create the folder and apply the pragmas."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(
            url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True, future=True
        )
    if parsed.database in (None, "", ":memory:"):
        raise ValueError("SQLite must be a file: threads cannot share an in-memory database")
    Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url, connect_args={"timeout": _SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
    )
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def _sqlite_on_connect(dbapi_connection, _record) -> None:
    # Take transaction control away from the driver so our BEGIN below is the only one.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _sqlite_on_begin(connection) -> None:
    mode = "DEFERRED" if connection.get_execution_options().get("readonly") else "IMMEDIATE"
    connection.exec_driver_sql(f"BEGIN {mode}")


T = TypeVar("T")


class Statements:
    """Statements that are each their own transaction (a run's start, every state change of a
    run): a pool of autocommit connections, on Postgres with no ping before each checkout, so
    a statement is one round trip (a session's write is four: ping, BEGIN, the statement,
    COMMIT)."""

    def __init__(self, url: str | URL, *, pool_size: int) -> None:
        url = make_url(url)
        if url.get_backend_name() != "postgresql":
            # The SQLite setup above (pragmas, BEGIN IMMEDIATE) applies.
            self.engine = make_engine(url.render_as_string(hide_password=False))
        else:
            self.engine = create_engine(
                url,
                pool_size=pool_size,
                max_overflow=pool_size,
                isolation_level="AUTOCOMMIT",
                pool_reset_on_return=None,  # autocommit: never a transaction to roll back
            )

    def run(self, work: Callable[[Connection], T]) -> T:
        """`work` on a connection of the pool. A connection found dead (the server restarted,
        or killed it) fails its statement before anything is written and is thrown away; the
        work is sent once more on a fresh one. (One re-send on one error: tenacity's setup on
        every call would cost more than a statement's Python side.)"""
        try:
            return self._once(work)
        except DBAPIError as error:
            if not error.connection_invalidated:
                raise
        return self._once(work)

    def _once(self, work: Callable[[Connection], T]) -> T:
        with self.engine.connect() as connection:
            return work(connection)

    def dispose(self) -> None:
        self.engine.dispose()


@dataclass(frozen=True)
class Prepared:
    """A Postgres statement planned once per connection (PREPARE), then only run (EXECUTE): the
    hot path's multi-CTE statements cost more to plan than to execute (1.3 ms of 2 ms,
    measured)."""

    name: str
    sql: str  # with $1, $2, ... for the values, in the order of `params`
    params: tuple[str, ...]

    @classmethod
    def of(cls, name: str, named_sql: str) -> Prepared:
        """From SQL with %(name)s placeholders, as psycopg2 takes them."""
        params: list[str] = []

        def number(match: re.Match[str]) -> str:
            if match.group(1) not in params:
                params.append(match.group(1))
            return f"${params.index(match.group(1)) + 1}"

        return cls(name, re.sub(r"%\((\w+)\)s", number, named_sql), tuple(params))

    def run(
        self,
        connection: Connection,
        values: dict[str, Any],
        *,
        before: str = "",
        first: Sequence[Bound] = (),
    ) -> Row[Any]:
        """EXECUTE it with `values` and return its row. In the same round trip, and the same
        implicit transaction, it comes after the plain SQL `before`, then after the prepared
        statements `first` (each with its own values; their rows are not returned). Each is
        PREPAREd first on a connection new to it."""
        sql, parameters = [before], dict(values)
        for n, earlier in enumerate(first):
            prefix = f"first{n}_"
            sql.append(earlier.statement.prepared_on(connection).execute_as(prefix) + ";")
            parameters.update({prefix + k: v for k, v in earlier.values.items()})
        sql.append(self.prepared_on(connection).execute)
        return connection.exec_driver_sql("".join(sql), parameters).one()

    def prepared_on(self, connection: Connection) -> Prepared:
        prepared = connection.connection.info.setdefault("reelforge_prepared", set())
        if self.name not in prepared:
            connection.exec_driver_sql(f"PREPARE {self.name} AS {self.sql}")
            prepared.add(self.name)
        return self

    @cached_property
    def execute(self) -> str:
        return self.execute_as("")

    def execute_as(self, prefix: str) -> str:
        """The EXECUTE, taking each value from the parameter named `prefix` + its name."""
        arguments = ", ".join(f"%({prefix}{param})s" for param in self.params)
        return f"EXECUTE {self.name}({arguments})"


@dataclass(frozen=True)
class Bound:
    """A prepared statement with the values to run it with."""

    statement: Prepared
    values: dict[str, Any]


def json_text(value: Any) -> str:
    """`value` as the JSON text a statement's json parameter takes."""
    return json.dumps(value, default=_json_default, separators=(",", ":"))


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class Database:
    """One engine and its two session factories: `begin()` for writes, `read()` for reads;
    and `statements` for the hot path's single statements.

    Data functions take a session and never commit; the caller owns the transaction.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.statements = Statements(engine.url, pool_size=4)
        self._writer = sessionmaker(engine, expire_on_commit=False)
        self._reader = sessionmaker(engine.execution_options(readonly=True), expire_on_commit=False)

    @classmethod
    def from_url(cls, url: str) -> Database:
        return cls(make_engine(url))

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def begin(self) -> Iterator[Session]:
        """A write transaction: committed on success, rolled back on any exception."""
        with self._writer.begin() as session:
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only transaction (rolled back at the end)."""
        with self._reader() as session, session.begin():
            yield session

    def dispose(self) -> None:
        self.engine.dispose()
        self.statements.dispose()


def insert_once(session: Session, model: Any, values: dict[str, Any]) -> int | None:
    """INSERT ... ON CONFLICT (idempotency_key) DO NOTHING: the new row's id, or None when a
    row with the same key exists (or a concurrent transaction holding it commits first, on
    Postgres, where the insert waits for it). Never raises on the duplicate, so it needs no
    savepoint and cannot abort the caller's transaction."""
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    statement = (
        dialect.insert(model)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["idempotency_key"])
        .returning(model.id)
    )
    return session.execute(statement).scalar_one_or_none()


@contextmanager
def scratch_database(server_url: str, *, prefix: str = "reelforge_scratch") -> Iterator[str]:
    """A new, empty Postgres database on `server_url`'s server, dropped (with any connections
    left open) when the block ends. For tests and benchmarks, never for real data."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade_schema(url: str) -> None:
    """Bring the database at `url` to the newest schema (creating the SQLite file if needed)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), "head")
