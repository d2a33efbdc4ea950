"""The completion webhook against a real local HTTP receiver: the body, and retries when the
receiver fails, without ever failing the finished run."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from core.executor import InlineExecutor
from core.models import ApiCall
from core.runtime import Runtime
from core.schemas import parse_request
from core.states import StepName, WorkflowStatus
from tests.helpers import load
from tests.local_http import LocalServer, local_server

PAYLOAD = {
    "imagePrompt": "a kite over the dunes",
    "videoPrompt": "slow tilt up",
    "imageConfig": {"size": "1024x1024"},
    "videoConfig": {"duration": "4s", "generateAudio": False},
}


@pytest.fixture
def receiver(request: pytest.FixtureRequest) -> Iterator[LocalServer]:
    """The webhook's receiver: answers each POST with the next scripted status, then 200."""
    statuses = list(getattr(request, "param", []))
    with local_server(lambda _: (statuses.pop(0) if statuses else 200, {})) as server:
        yield server


def bodies(receiver: LocalServer) -> list[dict]:
    return [json.loads(r.body) for r in receiver.requests]


def run_once(settings, make_user, receiver: LocalServer):
    runtime = Runtime(
        settings.model_copy(update={"webhook_url": f"{receiver.url}/hooks/reelforge"}),
        upgrade=False,
        executor=InlineExecutor(),
    )
    try:
        workflow_id, _ = runtime.start_workflow(make_user(credits=100), parse_request(PAYLOAD))
        view = load(runtime, workflow_id)
        with runtime.db.read() as session:
            outcomes = session.scalars(
                select(ApiCall.outcome)
                .where(ApiCall.workflow_id == workflow_id, ApiCall.provider == "webhook")
                .order_by(ApiCall.attempt)
            ).all()
        return view, outcomes
    finally:
        runtime.shutdown()


def test_a_completed_run_posts_its_id_and_status_once(settings, make_user, receiver):
    view, outcomes = run_once(settings, make_user, receiver)
    assert view.status is WorkflowStatus.COMPLETED
    assert bodies(receiver) == [{"workflowId": view.id, "status": "completed"}]
    assert [(r.method, r.path) for r in receiver.requests] == [("POST", "/hooks/reelforge")]
    assert view.step(StepName.FINALIZE).output["webhook_notified"] is True
    assert outcomes == ["ok"]


@pytest.mark.parametrize("receiver", [[503, 500]], indirect=True)
def test_a_failing_receiver_is_retried_until_it_takes_the_notice(settings, make_user, receiver):
    view, outcomes = run_once(settings, make_user, receiver)
    assert view.status is WorkflowStatus.COMPLETED
    assert bodies(receiver) == [{"workflowId": view.id, "status": "completed"}] * 3
    assert view.step(StepName.FINALIZE).output["webhook_notified"] is True
    assert outcomes[-1] == "ok" and len(outcomes) == 3


@pytest.mark.parametrize("receiver", [[500] * 10], indirect=True)
def test_a_receiver_that_never_answers_well_does_not_fail_the_run(settings, make_user, receiver):
    view, outcomes = run_once(settings, make_user, receiver)
    assert view.status is WorkflowStatus.COMPLETED
    assert len(receiver.requests) == settings.retry_max_attempts
    assert view.step(StepName.FINALIZE).output["webhook_notified"] is False
    assert len(outcomes) == settings.retry_max_attempts and "ok" not in outcomes
