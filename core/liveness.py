"""Who is running what, and whether they are still alive.

On Postgres a runner holds a session-level advisory lock per run while it runs it, all on one
dedicated connection of its process. The server drops those locks the moment the process (or its
connection) dies, so recovery can tell a dead runner from a slow one at once instead of waiting
for its heartbeat to go stale. The heartbeat stays: it is SQLite's only signal, and on Postgres
the fallback for a runner that is alive but stuck (its lock then keeps others out).

Also here: the `workers` table each process's housekeeping refreshes (`python -m core workers`),
and the one-recovery-pass-at-a-time lock.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, delete, func, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from core.clock import utcnow
from core.db import Database
from core.models import WorkerBeat, Workflow
from core.states import WorkflowStatus

log = logging.getLogger(__name__)

# Advisory lock keys share one 64-bit space per database: run keys are hashes of the run id;
# this constant (b"rf-recov") is the recovery pass's.
RECOVERY_LOCK_KEY = int.from_bytes(b"rf-recov", "big", signed=True)


def this_worker_id() -> str:
    """host:pid, the id shown on runs, steps and in `python -m core workers`."""
    return f"{socket.gethostname()}:{os.getpid()}"


def run_lock_key(workflow_id: str) -> int:
    digest = hashlib.blake2b(workflow_id.encode(), digest_size=8, person=b"rf-run").digest()
    return int.from_bytes(digest, "big", signed=True)


_LOCK = "SELECT pg_advisory_lock(%(k)s)"
_TRY_LOCK = "SELECT pg_try_advisory_lock(%(k)s)"
_UNLOCK = "SELECT pg_advisory_unlock(%(k)s)"
_ALIVE = "SELECT 1"


class RunLocks:
    """The runs this process is running: one thread each, and on Postgres an advisory lock
    each, so no other process runs them either."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self.enabled = db.dialect == "postgresql"
        self._mutex = threading.Lock()
        self._connection: Connection | None = None
        # Advisory locks are re-entrant within their session: a second delivery of a run's
        # message to this process must be refused here, not by the database.
        self._held: set[str] = set()

    def acquire(self, workflow_id: str) -> bool:
        """Take the run's lock; False when a thread here or another live process holds it (it
        is running the run, or a duplicate delivery of its message is being turned away)."""
        with self._mutex:
            if workflow_id in self._held:
                return False
            if self.enabled and not self._execute(_TRY_LOCK, workflow_id):
                return False
            self._held.add(workflow_id)
            return True

    def release(self, workflow_id: str) -> None:
        with self._mutex:
            self._held.discard(workflow_id)
            if not self.enabled:
                return
            try:
                self._execute(_UNLOCK, workflow_id)
            except DBAPIError:  # the connection is gone, and the lock with it
                log.warning("Workflow %s - run lock connection lost on release", workflow_id)

    def keep(self) -> None:
        """Make sure this process still holds its runs' locks (the housekeeping beat calls
        this). A lock connection that dropped (the server restarted, or killed it) took them
        with it, and recovery elsewhere would take those runs over as dead: the dead connection
        is replaced, and the locks are taken again on the new one (`_connected`)."""
        with self._mutex:
            if not self.enabled or not self._held:
                return
            try:
                self._execute(_ALIVE, None)
            except DBAPIError:  # found dead and thrown away: this reconnects
                self._execute(_ALIVE, None)

    def close(self) -> None:
        with self._mutex:
            self._held.clear()
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def _execute(self, statement: str, workflow_id: str | None) -> object:
        try:
            key = {} if workflow_id is None else {"k": run_lock_key(workflow_id)}
            return self._connected().exec_driver_sql(statement, key).scalar()
        except DBAPIError:
            if self._connection is not None:
                self._connection.invalidate()
                self._connection = None
            raise

    def _connected(self) -> Connection:
        if self._connection is not None and not self._connection.closed:
            return self._connection
        # AUTOCOMMIT: the connection holds locks for minutes, never an open transaction.
        self._connection = self._db.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        for workflow_id in sorted(self._held):  # they went with the connection that is gone
            key = {"k": run_lock_key(workflow_id)}
            if not self._connection.exec_driver_sql(_TRY_LOCK, key).scalar():
                log.warning("Workflow %s - its run lock was taken elsewhere meanwhile", workflow_id)
        return self._connection


def unheld(db: Database, workflow_ids: Sequence[str]) -> list[str]:
    """The runs among `workflow_ids` whose run lock nobody holds: their runner is dead.
    Always empty off Postgres (no lock to ask)."""
    if db.dialect != "postgresql" or not workflow_ids:
        return []
    free = []
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        for workflow_id in workflow_ids:
            key = {"k": run_lock_key(workflow_id)}
            if connection.exec_driver_sql(_TRY_LOCK, key).scalar():
                connection.exec_driver_sql(_UNLOCK, key)
                free.append(workflow_id)
    return free


@contextmanager
def recovery_turn(db: Database, *, wait: bool) -> Iterator[bool]:
    """One recovery pass at a time across every process on Postgres (yields False when another
    process is in its pass and `wait` is off). SQLite serves one machine: always True."""
    if db.dialect != "postgresql":
        yield True
        return
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        key = {"k": RECOVERY_LOCK_KEY}
        if wait:
            connection.exec_driver_sql(_LOCK, key)
            got = True
        else:
            got = bool(connection.exec_driver_sql(_TRY_LOCK, key).scalar())
        try:
            yield got
        finally:
            if got:
                connection.exec_driver_sql(_UNLOCK, key)


# -- runs in hand -------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeldRun:
    """A running run and who holds it, for recovery and `python -m core recover`."""

    workflow_id: str
    runner_id: str | None
    worker_id: str | None
    heartbeat_at: datetime | None


def running_runs(session: Session) -> list[HeldRun]:
    rows = session.execute(
        select(Workflow.id, Workflow.runner_id, Workflow.worker_id, Workflow.heartbeat_at)
        .where(Workflow.status == WorkflowStatus.RUNNING.value)
        .order_by(Workflow.created_at)
    )
    return [HeldRun(*row) for row in rows]


def mark_nudged(session: Session, workflow_ids: Sequence[str]) -> None:
    """Recovery re-sent these runs: a queued one is not re-sent again before it is stale anew
    (a long broker queue must not fill up with copies of the same nudge)."""
    if workflow_ids:
        session.execute(
            update(Workflow).where(Workflow.id.in_(workflow_ids)).values(nudged_at=utcnow()),
            execution_options={"synchronize_session": False},
        )


def next_waiting(connection: Session | Connection, user_id: int) -> str | None:
    """The user's oldest queued run: the one to nudge when one of their slots frees."""
    return connection.execute(
        select(Workflow.id)
        .where(Workflow.user_id == user_id, Workflow.status == WorkflowStatus.QUEUED.value)
        .order_by(Workflow.created_at)
        .limit(1)
    ).scalar()


def running_count(session: Session, user_id: int) -> int:
    return session.execute(
        select(func.count())
        .select_from(Workflow)
        .where(Workflow.user_id == user_id, Workflow.status == WorkflowStatus.RUNNING.value)
    ).scalar_one()


# -- the workers table --------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerView:
    id: str
    host: str
    kind: str
    runs_in_hand: int
    started_at: datetime
    last_seen_at: datetime


def beat(session: Session, worker_id: str, *, kind: str, runs_in_hand: int) -> None:
    """This process is alive with `runs_in_hand` runs (an upsert: one row per process)."""
    now = utcnow()
    seen = session.execute(
        update(WorkerBeat)
        .where(WorkerBeat.id == worker_id)
        .values(last_seen_at=now, runs_in_hand=runs_in_hand, kind=kind),
        execution_options={"synchronize_session": False},
    ).rowcount
    if not seen:
        host = worker_id.rsplit(":", 1)[0]
        session.add(
            WorkerBeat(
                id=worker_id,
                host=host,
                kind=kind,
                runs_in_hand=runs_in_hand,
                started_at=now,
                last_seen_at=now,
            )
        )


def leave(session: Session, worker_id: str) -> None:
    """A clean stop: the process is no longer listed."""
    session.execute(delete(WorkerBeat).where(WorkerBeat.id == worker_id))


def live_workers(session: Session, *, seen_after: datetime) -> list[WorkerView]:
    rows = session.execute(
        select(WorkerBeat).where(WorkerBeat.last_seen_at >= seen_after).order_by(WorkerBeat.id)
    ).scalars()
    return [
        WorkerView(r.id, r.host, r.kind, r.runs_in_hand, r.started_at, r.last_seen_at) for r in rows
    ]
