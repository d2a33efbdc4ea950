"""The completion webhook against a real local HTTP receiver: the body, and retries when the
receiver fails, without ever failing the finished run."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import select

from core.executor import InlineExecutor
from core.models import ApiCall
from core.runtime import Runtime
from core.states import StepName, WorkflowStatus
from tests.helpers import load

PAYLOAD = {
    "imagePrompt": "a kite over the dunes",
    "videoPrompt": "slow tilt up",
    "imageConfig": {"size": "1024x1024"},
    "videoConfig": {"duration": "4s", "generateAudio": False},
}


class Receiver(ThreadingHTTPServer):
    """Answers each POST with the next scripted status (200 once the script runs out)."""

    def __init__(self, statuses: list[int]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.statuses = statuses
        self.bodies: list[dict] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hooks/reelforge"


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        length = int(self.headers["Content-Length"])
        self.server.bodies.append(json.loads(self.rfile.read(length)))
        status = self.server.statuses.pop(0) if self.server.statuses else 200
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_args) -> None:
        pass


@pytest.fixture
def receiver(request: pytest.FixtureRequest) -> Iterator[Receiver]:
    server = Receiver(list(getattr(request, "param", [])))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def run_once(settings, make_user, receiver: Receiver):
    runtime = Runtime(
        settings.model_copy(update={"webhook_url": receiver.url}),
        upgrade=False,
        executor=InlineExecutor(),
    )
    try:
        workflow_id, _ = runtime.start_workflow(make_user(credits=100), PAYLOAD)
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
    assert receiver.bodies == [{"workflowId": view.id, "status": "completed"}]
    assert view.step(StepName.FINALIZE).output["webhook_notified"] is True
    assert outcomes == ["ok"]


@pytest.mark.parametrize("receiver", [[503, 500]], indirect=True)
def test_a_failing_receiver_is_retried_until_it_takes_the_notice(settings, make_user, receiver):
    view, outcomes = run_once(settings, make_user, receiver)
    assert view.status is WorkflowStatus.COMPLETED
    assert receiver.bodies == [{"workflowId": view.id, "status": "completed"}] * 3
    assert view.step(StepName.FINALIZE).output["webhook_notified"] is True
    assert outcomes[-1] == "ok" and len(outcomes) == 3


@pytest.mark.parametrize("receiver", [[500] * 10], indirect=True)
def test_a_receiver_that_never_answers_well_does_not_fail_the_run(settings, make_user, receiver):
    view, outcomes = run_once(settings, make_user, receiver)
    assert view.status is WorkflowStatus.COMPLETED
    assert len(receiver.bodies) == settings.retry_max_attempts
    assert view.step(StepName.FINALIZE).output["webhook_notified"] is False
    assert len(outcomes) == settings.retry_max_attempts and "ok" not in outcomes
