"""Traces in one process: a run on the threads executor is one trace (its start, its run span,
six step spans, a span per provider call attempt), recorded by the SDK's in-memory exporter.

The SDK provider installed here is this test process's global one; outside these tests its
sampler starts no trace, so the rest of the suite records nothing.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    SamplingResult,
)
from opentelemetry.trace import format_span_id, format_trace_id

from core import telemetry, workflows
from core.config import Settings
from core.executor import InlineExecutor
from core.models import ApiCall
from core.runtime import Runtime
from core.schemas import parse_request
from core.states import STEP_ORDER, WorkflowStatus
from tests.helpers import ParkedExecutor, call_attempt, load, wait_for
from tests.otlp_receiver import otlp_receiver
from tests.test_cli import run_cli

REPO = Path(__file__).resolve().parents[1]
PAYLOAD = {
    "imagePrompt": "a lighthouse at dusk",
    "videoPrompt": "slow pan",
    "imageConfig": {"size": "1024x1024"},
    "videoConfig": {"duration": "4s", "generateAudio": False},
}
REQUEST = parse_request(PAYLOAD)


class _Switch(Sampler):
    """Starts traces only while a test here records."""

    on = False

    def should_sample(self, *args, **kwargs) -> SamplingResult:
        return (ALWAYS_ON if self.on else ALWAYS_OFF).should_sample(*args, **kwargs)

    def get_description(self) -> str:
        return "tests' switch"


_SWITCH = _Switch()
_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider(sampler=ParentBased(root=_SWITCH))
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    _SWITCH.on = True
    yield _EXPORTER
    _SWITCH.on = False
    _EXPORTER.clear()


@pytest.fixture
def threaded(settings: Settings) -> Iterator[Runtime]:
    """The app's engine: runs on this process's thread pool."""
    faulty = settings.model_copy(update={"fault_transient_rate": 0.3, "fault_seed": 7})
    engine = Runtime(faulty, upgrade=False)
    yield engine
    engine.shutdown()


def _hex(span: ReadableSpan) -> tuple[str, str, str | None]:
    """(trace id, span id, parent span id) as hex."""
    context, parent = span.get_span_context(), span.parent
    return (
        format_trace_id(context.trace_id),
        format_span_id(context.span_id),
        format_span_id(parent.span_id) if parent else None,
    )


def test_a_run_on_the_thread_pool_is_one_trace_with_its_steps_and_every_call_attempt(
    spans, threaded, make_user
):
    user = make_user(credits=100)
    workflow_id, _ = threaded.start_workflow(user, REQUEST)
    wait_for(lambda: load(threaded, workflow_id).status.is_terminal, 60)
    with threaded.db.read() as session:
        view = workflows.load_workflow(session, workflow_id)
        calls = session.query(ApiCall).filter_by(workflow_id=workflow_id).all()
    assert view.status is WorkflowStatus.COMPLETED
    wait_for(lambda: any(s.name == "workflow.run" for s in spans.get_finished_spans()))
    finished = spans.get_finished_spans()

    # One trace, the run's stored one, rooted at the start.
    assert {_hex(s)[0] for s in finished} == {view.trace_id}
    start, run = _one(finished, "workflow.start"), _one(finished, "workflow.run")
    assert view.traceparent.split("-")[1:3] == [view.trace_id, _hex(start)[1]]
    assert start.parent is None and start.attributes[telemetry.RUN_ID] == workflow_id
    assert _hex(run)[2] == _hex(start)[1]  # the pool thread continued the stored context
    assert run.attributes[telemetry.OUTCOME] == "completed"

    # Six steps under the run, in order, each completed.
    steps = sorted((s for s in finished if s.name.startswith("step ")), key=lambda s: s.start_time)
    assert [s.attributes[telemetry.STEP] for s in steps] == [n.value for n in STEP_ORDER]
    assert all(_hex(s)[2] == _hex(run)[1] for s in steps)
    assert all(s.attributes[telemetry.OUTCOME] == "completed" for s in steps)
    assert all(s.attributes[telemetry.RUN_ID] == workflow_id for s in steps)

    # A span per provider call attempt, under its step, saying what its api_calls row says.
    step_of = {_hex(s)[1]: s.attributes[telemetry.STEP] for s in steps}
    attempts = [s for s in finished if telemetry.ATTEMPT in s.attributes]
    assert sorted(_attempt(s, step_of) for s in attempts) == sorted(
        (c.step, c.provider, c.operation, c.attempt, c.outcome, float(c.cost_usd)) for c in calls
    )
    assert any(c.outcome == "transient" for c in calls)  # the seed makes a retry
    model = {s.attributes[telemetry.OPERATION]: s.attributes.get(telemetry.MODEL) for s in attempts}
    settings = threaded.settings
    assert model["moderate"] == settings.moderation_model
    assert (model["generate"], model["submit"]) == (settings.image_model, settings.video_model)
    assert model["put"] is None  # storage has no model
    by_operation = {s.attributes[telemetry.OPERATION]: s for s in attempts}
    request_id = view.step(STEP_ORDER[3]).provider_request_id
    assert by_operation["status"].attributes[telemetry.REQUEST_ID] == request_id
    assert by_operation["result"].attributes[telemetry.REQUEST_ID] == request_id
    assert _one(finished, "step generate_video").attributes[telemetry.REQUEST_ID] == request_id


def _one(spans: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    (found,) = [s for s in spans if s.name == name]
    return found


def _attempt(span: ReadableSpan, step_of: dict[str, str]) -> tuple:
    a = span.attributes
    assert a[telemetry.RUN_ID] and a[telemetry.STEP] == step_of[_hex(span)[2]]
    return call_attempt(a)


def test_a_failed_step_ends_its_span_in_error_with_the_runs_outcome(spans, runtime, make_user):
    user = make_user(credits=100)
    flagged = REQUEST.model_copy(update={"image_prompt": "a lighthouse, violence and gore"})
    workflow_id, _ = runtime.start_workflow(user, flagged)
    with runtime.db.read() as session:
        assert workflows.load_workflow(session, workflow_id).status is WorkflowStatus.FAILED
    validate = _one(spans.get_finished_spans(), "step validate")
    assert validate.attributes[telemetry.OUTCOME] == "failed"
    assert validate.status.status_code is trace.StatusCode.ERROR
    run = _one(spans.get_finished_spans(), "workflow.run")
    assert run.attributes[telemetry.OUTCOME] == "failed"


def test_without_an_endpoint_no_sdk_is_loaded_and_runs_get_no_trace(tmp_path, database_url):
    """In a fresh process (this one has the tests' provider): setup finds no endpoint, the API's
    no-op provider stays, the SDK is never imported, and a run's trace columns stay empty."""
    script = f"""
import sys
from opentelemetry import trace
from core import telemetry, workflows
from core.config import Settings
from core.executor import InlineExecutor
from core.runtime import Runtime
from core.auth import create_user
from core.schemas import parse_request

assert telemetry.setup("cli") is False
settings = Settings(_env_file=None, database_url={database_url!r}, data_dir={str(tmp_path)!r},
                    offline_latency_s=0)
runtime = Runtime(settings, upgrade=False, executor=InlineExecutor())
with runtime.db.begin() as session:
    user = create_user(session, "off@example.com", starting_credits=100)
workflow_id, _ = runtime.start_workflow(user, parse_request({PAYLOAD!r}))
with runtime.db.read() as session:
    view = workflows.load_workflow(session, workflow_id)
runtime.shutdown()
print(view.status, view.trace_id, view.traceparent, type(trace.get_tracer_provider()).__name__,
      sorted(m for m in sys.modules if m.startswith("opentelemetry.sdk")))
"""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["completed", "None", "None", "ProxyTracerProvider", "[]"]


def test_a_run_recovered_by_another_process_continues_the_trace_it_was_created_in(
    spans, settings, make_user
):
    creator = Runtime(settings, upgrade=False, executor=ParkedExecutor())  # dies before running
    workflow_id, _ = creator.start_workflow(make_user(credits=100), REQUEST)
    creator.shutdown()
    successor = Runtime(settings, upgrade=False, executor=InlineExecutor())
    assert successor.orchestrator.recover(all_queued=True).resubmitted == [workflow_id]
    successor.shutdown()
    view = load(successor, workflow_id)
    assert view.status is WorkflowStatus.COMPLETED
    finished = spans.get_finished_spans()
    start, run = _one(finished, "workflow.start"), _one(finished, "workflow.run")
    assert {_hex(s)[0] for s in finished} == {view.trace_id}
    assert _hex(run)[2] == _hex(start)[1]
    assert len([s for s in finished if s.name.startswith("step ")]) == len(STEP_ORDER)


def test_a_run_from_the_command_line_is_one_trace_and_runs_show_gives_its_id(tmp_path, monkeypatch):
    with otlp_receiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        done = run_cli(tmp_path, "run", "--image-prompt", "a fox", "--video-prompt", "slow pan")
        assert done.returncode == 0, done.stderr
        workflow_id = re.search(r"Workflow ([0-9a-f]{32})", done.stdout).group(1)
        shown = json.loads(run_cli(tmp_path, "runs", "show", workflow_id, "--json").stdout)
        assert f"trace {shown['traceId']}" in done.stdout
        spans = receiver.spans(shown["traceId"])  # the CLI flushed them as it exited
    (root,) = [s for s in spans if s.parent_id not in {s.span_id for s in spans}]
    assert (root.name, root.service) == ("workflow.start", "reelforge-cli")
    steps = [s.attributes[telemetry.STEP] for s in spans if s.name.startswith("step ")]
    assert sorted(steps) == sorted(n.value for n in STEP_ORDER)
