"""The database goes away under running workflows: connections killed mid-run, then a short
outage. Runs continue or are recovered; nothing fails for it and nothing is charged twice."""

from __future__ import annotations

import time
from contextlib import contextmanager

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from core.auth import create_user
from core.config import Settings
from core.executor import ThreadExecutor
from core.runtime import Runtime
from core.schemas import parse_request
from core.states import StepStatus, WorkflowStatus
from tests.helpers import balance, load, wait_for

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


def test_killed_connections_and_a_short_outage_lose_no_run(postgres_only_url, tmp_path):
    database = make_url(postgres_only_url).database
    runtime = engine_under_test(postgres_only_url, tmp_path)
    with runtime.db.begin() as session:
        user = create_user(session, "faults@example.com", starting_credits=1000)
    runtime.start_background()
    ids = [runtime.start_workflow(user, parse_request(PAYLOAD))[0] for _ in range(6)]

    with server_admin(postgres_only_url) as admin:
        killed = 0
        for _ in range(5):  # connections cut mid-run, five times
            time.sleep(0.4)
            killed += terminate_backends(admin, database)
        # A short outage: nobody may connect to the database for two seconds.
        admin.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false'))
        try:
            terminate_backends(admin, database)
            time.sleep(2)
        finally:
            admin.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true'))

    wait_for(lambda: all(load(runtime, wid).status.is_terminal for wid in ids), timeout_s=180)
    views = [load(runtime, wid) for wid in ids]
    assert killed > 0
    assert [v.status for v in views] == [WorkflowStatus.COMPLETED] * 6, [
        v.error_message for v in views
    ]
    assert all(s.status is StepStatus.COMPLETED for v in views for s in v.steps)
    assert balance(runtime, user) == 1000 - sum(v.cost_credits for v in views)
    runtime.shutdown()
