"""The database goes away under running workflows: connections killed mid-run, then a short
outage. Runs continue or are recovered; nothing fails for it and nothing is charged twice."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from core.auth import create_user
from core.config import Settings
from core.db import Database
from core.executor import ThreadExecutor
from core.liveness import run_lock_key
from core.models import WorkflowStep
from core.runtime import Runtime
from core.schemas import parse_request
from core.states import StepStatus, WorkflowStatus
from tests.helpers import balance, load, wait_for
from tests.reliability import record

RUNS = 6
CUTS = 5
PAYLOAD = {
    "imagePrompt": "a harbour at dawn",
    "videoPrompt": "slow pan",
    "imageConfig": {"size": "1024x1024"},
    "videoConfig": {"duration": "4s", "generateAudio": False},
}


@contextmanager
def server_admin(url: str):
    admin = create_engine(make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            yield connection
    finally:
        admin.dispose()


def terminate_backends(admin, database: str) -> int:
    return admin.execute(
        text(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = :db AND pid <> pg_backend_pid()"
        ),
        {"db": database},
    ).scalar()


def engine_under_test(url: str, data_dir) -> Runtime:
    settings = Settings(
        _env_file=None,
        database_url=url,
        data_dir=data_dir,
        offline_latency_s=0.3,
        poll_interval_s=0.05,
        heartbeat_interval_s=0.1,
        heartbeat_stale_s=1.0,
        recovery_interval_s=0.3,
        max_recoveries=50,
    )
    return Runtime(settings, upgrade=False, executor=ThreadExecutor(4))


def steps_by_status(observer: Database) -> dict[str, int]:
    with observer.read() as session:
        rows = session.execute(
            select(WorkflowStep.status, func.count()).group_by(WorkflowStep.status)
        )
        return dict(rows.all())


def in_flight_after(observer: Database, completed_before: int) -> int:
    """Wait until a step is processing and more steps completed than `completed_before`;
    returns how many have completed."""
    counts: dict[str, int] = {}

    def ready() -> bool:
        counts.update(steps_by_status(observer))
        return counts.get("processing", 0) > 0 and counts.get("completed", 0) > completed_before

    wait_for(ready)
    return counts["completed"]


def logged(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(text in r.getMessage() for r in caplog.records)


LEFT_FOR_RECOVERY = "left for recovery"
HOUSEKEEPING_FAILED = "Housekeeping pass failed"


def cut_connections(admin, database: str, observer: Database) -> int:
    """Kill every backend CUTS times, each time while a step is processing and after more steps
    completed, so the cuts spread over the runs. Returns the connections killed."""
    killed, completed = 0, -1
    for _ in range(CUTS):
        completed = in_flight_after(observer, completed)
        killed += terminate_backends(admin, database)
    return killed


def outage(admin, database: str, observer: Database, caplog: pytest.LogCaptureFixture) -> float:
    """Nobody may connect until a runner has met the outage mid-step and the heartbeat and
    recovery pass has met it too. Returns how long it lasted."""
    in_flight_after(observer, -1)
    noticed = {text: logged(caplog, text) for text in (LEFT_FOR_RECOVERY, HOUSEKEEPING_FAILED)}
    admin.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false'))
    started = time.monotonic()
    try:
        terminate_backends(admin, database)
        wait_for(lambda: all(logged(caplog, text) > n for text, n in noticed.items()))
    finally:
        admin.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true'))
    return time.monotonic() - started


@pytest.fixture
def observer(postgres_only_url: str) -> Iterator[Database]:
    """The test's own reads: a fresh connection each time, so a cut never breaks them."""
    database = Database(create_engine(postgres_only_url, poolclass=NullPool))
    yield database
    database.dispose()


@pytest.fixture
def runtime(postgres_only_url: str, tmp_path) -> Iterator[Runtime]:
    engine = engine_under_test(postgres_only_url, tmp_path)
    yield engine
    engine.shutdown()


def test_killed_connections_and_a_short_outage_lose_no_run(
    postgres_only_url, runtime, observer, caplog
):
    caplog.set_level(logging.WARNING, logger="core")
    database = make_url(postgres_only_url).database
    with runtime.db.begin() as session:
        user = create_user(session, "faults@example.com", starting_credits=1000)
    runtime.start_background()
    ids = [runtime.start_workflow(user, parse_request(PAYLOAD))[0] for _ in range(RUNS)]

    with server_admin(postgres_only_url) as admin:
        killed = cut_connections(admin, database, observer)
        outage_s = outage(admin, database, observer, caplog)

    wait_for(lambda: all(load(runtime, wid).status.is_terminal for wid in ids), timeout_s=180)
    views = [load(runtime, wid) for wid in ids]
    assert killed >= CUTS
    assert [v.status for v in views] == [WorkflowStatus.COMPLETED] * RUNS, [
        v.error_message for v in views
    ]
    assert all(s.status is StepStatus.COMPLETED for v in views for s in v.steps)
    assert balance(runtime, user) == 1000 - sum(v.cost_credits for v in views)
    interruptions = logged(caplog, LEFT_FOR_RECOVERY)
    taken_over = sum(v.recoveries for v in views)
    assert interruptions >= 1 and taken_over >= 1
    record(
        "db_faults",
        postgres_only_url,
        cuts=CUTS,
        connections_killed=killed,
        outage_s=round(outage_s, 1),
        runs=RUNS,
        completed=len(views),
        interruptions=interruptions,
        taken_over=taken_over,
    )


def lock_holder(observer: Database, workflow_id: str) -> int | None:
    """The backend holding the run's lock (a bigint advisory lock shows in pg_locks as its high
    and low 32 bits), or None."""
    key = run_lock_key(workflow_id) & 0xFFFF_FFFF_FFFF_FFFF
    with observer.read() as session:
        return session.execute(
            text(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND classid = CAST(:high AS oid) AND objid = CAST(:low AS oid)"
                " AND objsubid = 1"
            ),
            {"high": key >> 32, "low": key & 0xFFFF_FFFF},
        ).scalar()


def test_a_runner_that_lost_its_lock_connection_takes_its_run_locks_again(
    postgres_only_url, runtime, observer
):
    """Recovery in another process reads a free run lock as a dead runner and takes the run
    over: a live runner whose lock connection was killed holds its locks again by its next
    housekeeping beat, and its run goes on to the end."""
    with runtime.db.begin() as session:
        user = create_user(session, "locks@example.com", starting_credits=1000)
    runtime.start_background()
    workflow_id = runtime.start_workflow(user, parse_request(PAYLOAD))[0]
    wait_for(lambda: lock_holder(observer, workflow_id) is not None)
    killed = lock_holder(observer, workflow_id)

    with server_admin(postgres_only_url) as admin:
        admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": killed})
    wait_for(lambda: lock_holder(observer, workflow_id) not in (None, killed))

    wait_for(lambda: load(runtime, workflow_id).status.is_terminal, timeout_s=120)
    view = load(runtime, workflow_id)
    assert view.status is WorkflowStatus.COMPLETED and view.recoveries == 0
