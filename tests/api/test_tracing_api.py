"""Traces across processes, with the real parts: a run started through the API (a uvicorn
subprocess) and executed by a Celery worker process on Redis, both exporting over OTLP/HTTP to
a receiver here, is one connected trace, and the id the API shows is that trace's."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from sqlalchemy import select

from core import telemetry
from core.models import ApiCall, Workflow, WorkflowStep
from core.states import STEP_ORDER, StepName
from tests.helpers import ENGINE_ENV, call_attempt, wait_for
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan, otlp_receiver
from tests.test_telemetry import PAYLOAD
from tests.test_workers import Worker

TASK = "reelforge.run_workflow"


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with otlp_receiver() as running:
        yield running


def _exporting(receiver: OtlpReceiver) -> dict[str, str]:
    # Spans leave every 50 ms instead of every 5 s: the test waits for them, not a timer.
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "50"}


@pytest.fixture
def worker(
    primary_database_url: str, redis_url: str, receiver: OtlpReceiver, tmp_path: Path
) -> Iterator[Worker]:
    """One `python -m core worker` on the API's database, storage and broker, retrying the
    transient faults a seeded injector throws at it."""
    env = {k: v for k, v in os.environ.items() if k not in ENGINE_ENV}
    env.update(
        _exporting(receiver),
        EXECUTOR="celery",
        REDIS_URL=redis_url,
        DATABASE_URL=primary_database_url,
        DATA_DIR=str(tmp_path / "data"),
        LOCAL_STORAGE_DIR=str(tmp_path / "data" / "storage"),
        OFFLINE_LATENCY_S="0",
        POLL_INTERVAL_S="0.05",
        RETRY_INITIAL_WAIT_S="0",
        RETRY_MAX_WAIT_S="0",
        FAULT_TRANSIENT_RATE="0.3",
        FAULT_SEED="7",
    )
    started = Worker(env, tmp_path / "worker.log", concurrency=1)
    yield started
    started.stop()


def test_a_run_through_the_api_and_a_worker_is_one_connected_trace(
    start_api, worker, receiver, redis_url
):
    api = start_api(EXECUTOR="celery", REDIS_URL=redis_url, **_exporting(receiver))
    account = api.account()
    started = account.client.post("/api/workflow/start", json=PAYLOAD)
    assert started.status_code == 202, started.text
    workflow_id = started.json()["workflowId"]
    status_url = f"/api/workflow/{workflow_id}/status"

    def ended() -> bool:
        assert worker.process.poll() is None, worker.output()[-3000:]
        return account.client.get(status_url).json()["status"] in ("completed", "failed")

    wait_for(ended, timeout_s=120)
    status = account.client.get(status_url).json()
    assert status["status"] == "completed", status
    trace_id = status["traceId"]
    with api.db.read() as session:
        assert session.get(Workflow, workflow_id).trace_id == trace_id
        calls = session.scalars(select(ApiCall).where(ApiCall.workflow_id == workflow_id)).all()
        job_id = session.scalar(
            select(WorkflowStep.provider_request_id).where(
                WorkflowStep.workflow_id == workflow_id,
                WorkflowStep.name == StepName.GENERATE_VIDEO.value,
            )
        )

    # Each process exports on its own schedule: wait until the worker's task span (its last
    # to end) and the API request's are in.
    wait_for(lambda: _named(receiver.spans(trace_id), f"run/{TASK}"), timeout_s=30)
    wait_for(lambda: _named(receiver.spans(trace_id), "POST /api/workflow/start"), timeout_s=30)
    spans = receiver.spans(trace_id)
    ids = {s.span_id for s in spans}

    # Connected: one root, the API request; every other span's parent is in the trace.
    (root,) = [s for s in spans if s.parent_id not in ids]
    assert (root.name, root.service, root.kind) == (
        "POST /api/workflow/start",
        "reelforge-api",
        Span.SPAN_KIND_SERVER,
    )
    # The path: request -> start -> publish -> (broker) -> worker task -> run -> steps.
    parent = {s.span_id: s for s in spans}
    run = _named(spans, "workflow.run")[0]
    chain = [run]
    while chain[-1].parent_id is not None:
        chain.append(parent[chain[-1].parent_id])
    assert [(s.name, s.service) for s in chain] == [
        ("workflow.run", "reelforge-worker"),
        (f"run/{TASK}", "reelforge-worker"),
        (f"apply_async/{TASK}", "reelforge-api"),
        ("workflow.start", "reelforge-api"),
        ("POST /api/workflow/start", "reelforge-api"),
    ]
    assert _named(spans, "workflow.start")[0].attributes[telemetry.RUN_ID] == workflow_id

    steps = [s for s in spans if s.name.startswith("step ")]
    assert sorted(s.attributes[telemetry.STEP] for s in steps) == sorted(
        n.value for n in STEP_ORDER
    )
    assert all(s.parent_id == run.span_id and s.service == "reelforge-worker" for s in steps)
    assert all(s.attributes[telemetry.OUTCOME] == "completed" for s in steps)

    # Each provider call attempt: a span under its step with what its api_calls row says.
    step_of = {s.span_id: s.attributes[telemetry.STEP] for s in steps}
    attempts = [s for s in spans if telemetry.ATTEMPT in s.attributes]
    assert sorted(_attempt(s, step_of, workflow_id) for s in attempts) == sorted(
        (c.step, c.provider, c.operation, c.attempt, c.outcome, float(c.cost_usd)) for c in calls
    )
    assert any(s.attributes[telemetry.OUTCOME] == "transient" for s in attempts)
    video = {s.attributes[telemetry.OPERATION]: s.attributes for s in attempts}["result"]
    assert video[telemetry.MODEL] == "fal-ai/veo3.1/image-to-video"
    assert video[telemetry.REQUEST_ID] == job_id
    # Both processes' database statements are in the run's trace, under its spans.
    queries = [s for s in spans if any(key.startswith("db.") for key in s.attributes)]
    assert {s.service for s in queries} == {"reelforge-api", "reelforge-worker"}
    assert any(s.parent_id == run.span_id for s in queries)  # the runner's state writes


def _named(spans: list[ReceivedSpan], name: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.name == name]


def _attempt(span: ReceivedSpan, step_of: dict[str, str], workflow_id: str) -> tuple:
    a = span.attributes
    assert a[telemetry.RUN_ID] == workflow_id and a[telemetry.STEP] == step_of[span.parent_id]
    return call_attempt(a)


def test_without_an_endpoint_nothing_is_exported_and_a_run_has_no_trace_id(start_api, receiver):
    api = start_api()  # the receiver listens, but nobody is told about it
    account = api.account()
    started = account.client.post(
        "/api/workflow/start", json=PAYLOAD, headers={"Prefer": "wait=60"}
    )
    assert started.json()["status"] == "completed", started.text
    status = account.client.get(f"/api/workflow/{started.json()['workflowId']}/status").json()
    assert status["traceId"] is None
    with api.db.read() as session:
        row = session.get(Workflow, started.json()["workflowId"])
        assert (row.trace_id, row.traceparent) == (None, None)
    assert receiver.spans() == []
