"""The load run in short form: concurrent workflows under injected faults keep every invariant."""

import pytest

from core.config import Settings
from core.db import upgrade_schema
from core.tools.load import run_load
from tests.reliability import record


@pytest.mark.slow
def test_twenty_concurrent_runs_under_faults_keep_every_invariant(primary_database_url, tmp_path):
    upgrade_schema(primary_database_url)
    settings = Settings(_env_file=None, data_dir=tmp_path, database_url=primary_database_url)

    report = run_load(settings, 20, timeout_s=300)

    assert report.broken == []
    assert sum(report.outcomes.values()) == 20
    assert set(report.outcomes) <= {"completed", "failed"}
    # 20% of calls fail transiently: retries must have happened, and absorbed most of them.
    assert report.retried_calls > 0
    assert report.outcomes.get("completed", 0) >= 10
    assert report.refunds == report.outcomes.get("failed", 0)
    record(
        "load",
        primary_database_url,
        runs=report.workflows,
        completed=report.outcomes.get("completed", 0),
        failed=report.outcomes.get("failed", 0),
        retried_calls=report.retried_calls,
    )
