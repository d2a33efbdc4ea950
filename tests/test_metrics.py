"""core.metrics in this process: counts move only with a commit, a run cancelled before it
starts counts as cancelled and refunded, and the database's gauges follow the runs (the same
exposition the API and the workers serve, parsed with the Prometheus text parser)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from core import metrics
from core.auth import Role, UserView
from core.runtime import Runtime
from core.schemas import parse_request
from tests.helpers import ParkedExecutor, Scrape

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
    families = text_string_to_metric_families(generate_latest(registry).decode())
    return Scrape([sample for family in families for sample in family.samples])


@pytest.fixture
def parked(settings) -> Iterator[Runtime]:
    """An engine whose runs stay queued: nothing executes them."""
    engine = Runtime(settings, upgrade=False, executor=ParkedExecutor())
    yield engine
    engine.shutdown()


def test_a_count_moves_when_its_transaction_commits_and_never_when_it_rolls_back(db):
    before = metrics.RUNS_STARTED.labels(model="rolled-back")._value.get()
    with pytest.raises(RuntimeError), db.begin() as session:
        metrics.run_started(session, "rolled-back")
        raise RuntimeError("the transaction fails after the hook")
    assert metrics.RUNS_STARTED.labels(model="rolled-back")._value.get() == before
    with db.begin() as session:
        metrics.run_started(session, "rolled-back")
        assert metrics.RUNS_STARTED.labels(model="rolled-back")._value.get() == before
    assert metrics.RUNS_STARTED.labels(model="rolled-back")._value.get() == before + 1


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
