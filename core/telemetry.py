"""Traces (OpenTelemetry): one trace per run, from the page, CLI or API request that created it,
through the broker, to a span per step and per provider call attempt on whichever machine runs it.

Off unless OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set: then
`setup` installs the SDK with an OTLP/HTTP exporter and the maintained instrumentations (FastAPI,
Celery, SQLAlchemy, httpx, botocore), and the standard OTEL_* variables (service name, sampler,
headers, timeouts...) are read by the SDK itself. Otherwise the API's no-op provider stays: the
spans below cost a function call each, nothing is exported, and runs get no trace id.

A run's trace context is stored on its row when it is created (`run_trace_columns`), so a runner
in any process, now or after a crash, continues the same trace (`traced_run`).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, Status, StatusCode, format_trace_id
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from core.errors import RunnerStoppingError
from core.reuse import CACHE_PROVIDER
from core.states import StepName, WorkflowStatus

if TYPE_CHECKING:
    from fastapi import FastAPI
    from sqlalchemy import Engine

    from core.step_execution import StepExecution
    from core.workflows import ApiCallRecord, WorkflowView

log = logging.getLogger(__name__)
T = TypeVar("T")

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")

# Span attributes (our own namespace: no semantic convention covers a run's step or a provider
# call attempt as a whole; the HTTP, database and messaging spans under them use the standard).
RUN_ID = "reelforge.run_id"
STEP = "reelforge.step"
PROVIDER = "reelforge.provider"
MODEL = "reelforge.model"
OPERATION = "reelforge.operation"
ATTEMPT = "reelforge.attempt"
OUTCOME = "reelforge.outcome"
REQUEST_ID = "reelforge.provider_request_id"
COST_USD = "reelforge.cost_usd"

_tracer = trace.get_tracer("reelforge")
# W3C trace context whatever OTEL_PROPAGATORS says: the stored column is a W3C traceparent.
_w3c = TraceContextTextMapPropagator()
_setup_lock = threading.Lock()
_enabled = False
_queries: Any = None  # the SDK's TracerProvider for database spans, once set up


def setup(role: str) -> bool:
    """Install tracing for this process (once; later calls return at once) when an OTLP
    endpoint is configured. `role` (app, api, cli, worker) names the service when
    OTEL_SERVICE_NAME does not. Returns whether tracing is on."""
    global _enabled, _queries
    with _setup_lock:
        if _enabled or not any(os.environ.get(name) for name in ENDPOINT_VARIABLES):
            return _enabled
        # Imported here: a process without tracing never loads the SDK or the instrumentations.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.instrumentation.botocore import BotocoreInstrumentor
        from opentelemetry.instrumentation.celery import CeleryInstrumentor
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased

        resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: f"reelforge-{role}"}))
        export = BatchSpanProcessor(OTLPSpanExporter())
        provider = TracerProvider(resource=resource)  # the sampler from OTEL_TRACES_SAMPLER
        provider.add_span_processor(export)
        trace.set_tracer_provider(provider)
        # Statements outside any trace (heartbeats, recovery, pollers: several a second) would
        # each be a trace of one span. Database spans are kept only inside a sampled trace.
        _queries = TracerProvider(
            resource=resource, sampler=ParentBased(root=ALWAYS_OFF), shutdown_on_exit=False
        )
        _queries.add_span_processor(export)
        CeleryInstrumentor().instrument()
        HTTPXClientInstrumentor().instrument()
        BotocoreInstrumentor().instrument()
        _enabled = True
        log.info("Telemetry - exporting traces over OTLP as %s", resource.attributes[SERVICE_NAME])
        return True


def instrument_database(*engines: Engine) -> None:
    """Trace the statements of the process's engines (the Runtime's sessions and single
    statements, and its runner's).
    Explicitly, not through the instrumentation's patched `create_engine`: core.db imported
    that name long before `setup` could patch it. The instrumentation is applied once per
    process, so a second Runtime's engines are not traced."""
    if _queries is None:
        return
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    # Its declared range (0.66b2) ends below SQLAlchemy 2.1, so its dependency check would
    # instrument nothing. It only listens to the engine's cursor events, unchanged in 2.1;
    # tests/api/test_tracing_api.py sees the statements arrive.
    SQLAlchemyInstrumentor().instrument(
        engines=list(engines), tracer_provider=_queries, skip_dep_check=True
    )


def instrument_api(app: FastAPI) -> None:
    """Trace the API's requests (a server span each, continuing a caller's traceparent)."""
    if not _enabled:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    # No span per ASGI message: a run's event stream sends one every few hundred milliseconds.
    FastAPIInstrumentor.instrument_app(app, exclude_spans=["receive", "send"])


def _off() -> bool:
    """No tracer provider is installed (no OTLP endpoint, and no test installed one): the run
    path then skips its spans, which even as no-ops cost ~20 µs each, twenty-odd per run."""
    return isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


# -- a run's trace -----------------------------------------------------------------------------


@contextmanager
def starting_run() -> Iterator[Span]:
    """The span around a run's creation: a child of the page's, CLI's or API request's span
    when there is one, a new trace's root otherwise. The run's trace context is taken inside
    it (`run_trace_columns`), so the run's own spans hang under it."""
    with _tracer.start_as_current_span("workflow.start") as span:
        yield span


def run_trace_columns() -> dict[str, str | None]:
    """The workflows row's trace columns from the current span: its W3C traceparent, and the
    trace id shown to users. None for both when tracing is off (a no-op span has no valid
    context). A trace the sampler left out keeps its traceparent, so every runner honours the
    same decision, but shows no id: there would be nothing to look up."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {"trace_id": None, "traceparent": None}
    carrier: dict[str, str] = {}
    _w3c.inject(carrier)
    shown = format_trace_id(context.trace_id) if context.trace_flags.sampled else None
    return {"trace_id": shown, "traceparent": carrier["traceparent"]}


def started(span: Span, workflow_id: str, *, created: bool) -> None:
    """The run a `starting_run` span made (or found: a repeated idempotent start)."""
    span.set_attribute(RUN_ID, workflow_id)
    span.set_attribute("reelforge.created", created)


def _run_parent(traceparent: str | None) -> tuple[Context | None, list[Link]]:
    """Where a run's span goes: under the current span when it is in the run's trace (the
    Celery task that carried the context in its message), otherwise under the stored context
    (a thread pool, a recovered run), linked to the current span when there is one."""
    current = trace.get_current_span().get_span_context()
    stored = _w3c.extract({"traceparent": traceparent}) if traceparent else None
    stored_span = trace.get_current_span(stored).get_span_context() if stored else None
    if stored is None or stored_span is None or not stored_span.is_valid:
        return None, []
    if current.is_valid and current.trace_id == stored_span.trace_id:
        return None, []
    return stored, [Link(current)] if current.is_valid else []


def traced_run(view: WorkflowView, drive: Callable[[], T]) -> T:
    """`drive()` (the run of `view`) inside the run's span, in the run's trace wherever this
    runs."""
    if _off():
        return drive()
    parent, links = _run_parent(view.traceparent)
    with _tracer.start_as_current_span(
        "workflow.run",
        context=parent,
        links=links,
        attributes={RUN_ID: view.id, "reelforge.recoveries": view.recoveries},
    ) as span:
        status = drive()
        # None: not run to its end here (released to recovery, or held by another runner).
        span.set_attribute(OUTCOME, str(status) if status is not None else "released")
        return status


# -- steps and provider calls ------------------------------------------------------------------


def traced_step(execution: StepExecution, step_function: Callable[..., Any]) -> Any:
    """`execution.run(step_function)` inside the step's span; its outcome is the run's end
    when the step ended it (failed, cancelled), else completed."""
    if _off():
        return execution.run(step_function)
    name = execution.step.name.value
    attributes = {RUN_ID: execution.workflow.id, STEP: name}
    if execution.step.provider_request_id:  # a resumed step, reattaching to its job
        attributes[REQUEST_ID] = execution.step.provider_request_id
    with _tracer.start_as_current_span(f"step {name}", attributes=attributes) as span:
        try:
            result = execution.run(step_function)
        except RunnerStoppingError:
            span.set_attribute(OUTCOME, "released")  # resumed later, maybe elsewhere
            raise
        ended = getattr(result, "status", None)  # an EndRun, or the step's output
        span.set_attribute(OUTCOME, str(ended or WorkflowStatus.COMPLETED))
        if ended is WorkflowStatus.FAILED:
            span.set_status(Status(StatusCode.ERROR, getattr(result, "message", "")))
        return result


def provider_job(request_id: str) -> None:
    """The step in flight got its provider job id (its later calls read it off the step)."""
    trace.get_current_span().set_attribute(REQUEST_ID, request_id)


@contextmanager
def call_span(
    execution: StepExecution, operation: str, provider: str, attempt: int
) -> Iterator[None]:
    """One provider call attempt; `call_recorded` adds how it went."""
    if _off():
        yield
        return
    attributes: dict[str, str | int] = {
        RUN_ID: execution.workflow.id,
        STEP: execution.step.name.value,
        PROVIDER: provider,
        OPERATION: operation,
        ATTEMPT: attempt,
    }
    model = _model(execution, provider)
    if model is not None:
        attributes[MODEL] = model
    if execution.step.provider_request_id:
        attributes[REQUEST_ID] = execution.step.provider_request_id
    with _tracer.start_as_current_span(f"{provider} {operation}", attributes=attributes):
        yield


def call_recorded(record: ApiCallRecord) -> None:
    """The attempt's outcome and cost, as its api_calls row has them."""
    span = trace.get_current_span()
    if not span.is_recording():
        return
    span.set_attribute(OUTCOME, record.outcome)
    span.set_attribute(COST_USD, float(record.cost_usd))
    if record.status_code is not None:
        span.set_attribute("http.response.status_code", record.status_code)
    if record.error_code is not None:
        span.set_attribute("error.type", record.error_code)


_STEP_MODELS: dict[StepName, Callable[[StepExecution], str | None]] = {
    StepName.VALIDATE: lambda e: e.settings.moderation_model,
    StepName.GENERATE_IMAGE: lambda e: e.workflow.request.image_model or e.settings.image_model,
    StepName.GENERATE_VIDEO: lambda e: e.workflow.request.video_model or e.settings.video_model,
    StepName.UPLOAD_VIDEO: lambda e: e.workflow.request.video_model or e.settings.video_model,
}


def _model(execution: StepExecution, provider: str) -> str | None:
    """The model a call asks for: the step's model, for calls to its model's provider (not
    storage, nor a reused still from the cache)."""
    if provider in (execution.providers.storage.name, CACHE_PROVIDER):
        return None
    pick = _STEP_MODELS.get(execution.step.name)
    return pick(execution) if pick is not None else None
