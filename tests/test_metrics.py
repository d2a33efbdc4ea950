"""core.metrics in this process: counts move only with a commit, a run cancelled before it
starts counts as cancelled and refunded, and the database's gauges follow the runs (the same
exposition the API and the workers serve, parsed with the Prometheus text parser)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, generate_latest

from core import metrics
from core.auth import Role, UserView
from core.runtime import Runtime
from core.schemas import parse_request
from tests.helpers import ParkedExecutor, Scrape, scrape_text

REQUEST = parse_request(
    {
        "imagePrompt": "a lighthouse at dusk",
        "videoPrompt": "slow pan",
        "videoModel": "fal-ai/veo3.1/fast/image-to-video",
    }
)
OPERATOR = UserView(0, "ops", "ops", Role.ADMIN, 0, True)


def _scrape(runtime: Runtime) -> Scrape:
    registry = metrics.exposition(runtime.db, worker_stale_s=60)
    return scrape_text(generate_latest(registry).decode())


@pytest.fixture
def parked(settings) -> Iterator[Runtime]:
    """An engine whose runs stay queued: nothing executes them."""
    engine = Runtime(settings, upgrade=False, executor=ParkedExecutor())
    yield engine
    engine.shutdown()


def _started(model: str) -> float:
    return REGISTRY.get_sample_value("reelforge_runs_started_total", {"model": model}) or 0.0


def test_a_count_moves_when_its_transaction_commits_and_never_when_it_rolls_back(db):
    before = _started("rolled-back")
    with pytest.raises(RuntimeError), db.begin() as session:
        metrics.run_started(session, "rolled-back")
        raise RuntimeError("the transaction fails after the hook")
    assert _started("rolled-back") == before
    with db.begin() as session:
        metrics.run_started(session, "rolled-back")
        assert _started("rolled-back") == before  # not before the commit
    assert _started("rolled-back") == before + 1


def test_a_queued_run_shows_in_the_gauges_and_its_cancel_counts_once_with_its_refund(
    parked, make_user
):
    user = make_user(credits=100)
    before = _scrape(parked)
    workflow_id, _ = parked.start_workflow(user, REQUEST)
    queued = _scrape(parked)
    model = REQUEST.video_model
    assert queued.moved(before, "reelforge_runs_started_total", model=model) == 1
    assert queued.value("reelforge_runs_queued") == 1
    assert queued.value("reelforge_runs_running") == 0
    assert queued.value("reelforge_oldest_queued_run_age_seconds") >= 0

    parked.cancel(workflow_id, OPERATOR)
    parked.cancel(workflow_id, OPERATOR)  # a second cancel of an ended run changes nothing
    after = _scrape(parked)
    assert (
        after.moved(before, "reelforge_runs_finished_total", model=model, status="cancelled") == 1
    )
    assert after.moved(before, "reelforge_refunds_total") == 1
    spent = after.moved(before, "reelforge_credits_spent_total")
    assert spent > 0 and after.moved(before, "reelforge_credits_refunded_total") == spent
    assert after.value("reelforge_runs_queued") == 0
    assert after.value("reelforge_workers_alive", kind="threads") == 0


def test_in_multiprocess_mode_one_scrape_adds_up_the_counts_of_every_process(
    tmp_path: Path, database_url: str
):
    """PROMETHEUS_MULTIPROC_DIR (prometheus-client reads it when it is imported, hence real
    processes): two processes count a refund each, a third answers the scrape for both."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "multiproc")}
    (tmp_path / "multiproc").mkdir()

    def python(code: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    for _ in range(2):
        python("from core import metrics; metrics.REFUNDS.inc()")
    exposed = python(
        "from prometheus_client import generate_latest\n"
        "from core import metrics\n"
        "from core.db import Database\n"
        f"db = Database.from_url({database_url!r})\n"
        "print(generate_latest(metrics.exposition(db, worker_stale_s=60)).decode())\n"
    )
    scraped = scrape_text(exposed)
    assert scraped.value("reelforge_refunds_total") == 2
    assert scraped.value("reelforge_runs_queued") == 0  # the database's gauges beside them
