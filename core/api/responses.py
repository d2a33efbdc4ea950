"""What the API answers, apart from the table models and the views: camelCase JSON, built from
the read side's frozen dataclasses."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class ApiModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)


class Links(ApiModel):
    status: str
    stream: str  # Server-Sent Events: each step change, then a final event
    cancel: str


RUN_ID = "0f3a9c1e5b7d4e2a8c6f1b3d5e7a9c2e"
RUN_LINKS = {
    "status": f"/api/workflow/{RUN_ID}/status",
    "cancel": f"/api/workflow/{RUN_ID}/cancel",
}


def _example(**values: Any) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": [values]})


class Started(ApiModel):
    model_config = _example(workflowId=RUN_ID, status="queued", links=RUN_LINKS)

    workflow_id: str
    status: str
    links: Links


class Step(ApiModel):
    name: str
    state: str
    progress: int
    message: str
    attempts: int
    started_at: datetime | None
    finished_at: datetime | None
    worker: str | None = None  # host:pid of the process that last started the step


class RunError(ApiModel):
    code: str | None  # the failure category, e.g. moderation, timeout, provider_unavailable
    message: str
    step: str | None


class Refund(ApiModel):
    credits: int
    ledger_entry_id: int


class AssetLink(ApiModel):
    kind: str
    content_type: str
    size_bytes: int
    url: str
    expires_at: datetime | None  # None: a link to this API, good while the token is


class Delivery(ApiModel):
    """One webhook message of the run, as its outbox row stands."""

    id: str  # the message's webhook-id, the same on every attempt
    event: str  # started | step | completed
    url: str
    status: str  # pending | delivered | failed
    attempts: int
    last_status_code: int | None  # the receiver's answer to the last attempt
    last_error: str | None  # why the last attempt got no answer
    next_attempt_at: datetime | None  # while pending
    created_at: datetime
    delivered_at: datetime | None


class Run(ApiModel):
    workflow_id: str
    status: str
    phase: str
    phase_label: str
    queue_position: int | None  # jobs ahead in the video provider's queue, while it waits there
    progress: int
    cost_credits: int
    cancel_requested: bool
    # The video provider's answer to a cancel: true/false, or null when none was asked.
    provider_cancel_confirmed: bool | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    worker: str | None = None  # host:pid of the process that last claimed the run
    trace_id: str | None = Field(
        None,
        description="The run's OpenTelemetry trace id, to hand an operator: one trace from "
        "the start through every step and provider call. Null when the server exports no "
        "traces (OTEL_EXPORTER_OTLP_ENDPOINT unset): there is no trace to look up.",
        examples=["4bf92f3577b34da6a3ce929d0e0e4736"],
        pattern="^[0-9a-f]{32}$",
    )
    steps: list[Step]
    error: RunError | None
    refund: Refund | None
    assets: list[AssetLink]
    deliveries: list[Delivery]  # the run's webhook messages
    links: Links


class Cancelling(ApiModel):
    model_config = _example(
        workflowId=RUN_ID, status="running", cancelStage="cancelling", links=RUN_LINKS
    )

    workflow_id: str
    status: str
    cancel_stage: str  # cancelling (stops at the next check) or cancelled (ended at once)
    links: Links


class RunSummary(ApiModel):
    workflow_id: str
    status: str
    project_id: int | None
    image_prompt: str
    video_prompt: str
    cost_credits: int
    created_at: datetime
    finished_at: datetime | None
    links: Links


class RunList(ApiModel):
    items: list[RunSummary]
    next_cursor: str | None  # pass back as `cursor` for the next page; null on the last


class Me(ApiModel):
    model_config = _example(
        id=7,
        email="you@example.com",
        displayName="You",
        role="user",
        balance=76,
        isActive=True,
    )

    id: int
    email: str
    display_name: str
    role: str
    balance: int
    is_active: bool


class HealthCheck(ApiModel):
    name: str
    ok: bool
    latency_ms: float | None = None  # admins only
    detail: str | None = None  # admins only


class Health(ApiModel):
    ok: bool
    checks: list[HealthCheck]


class FieldProblem(ApiModel):
    field: str  # as the dashboard names it, e.g. imageConfig.size
    message: str


class Problem(BaseModel):
    """RFC 9457 problem details, served as application/problem+json."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldProblem] | None = None  # validation problems only


VALIDATION_EXAMPLE = {
    "type": "urn:reelforge:problem:validation",
    "title": "Invalid request",
    "status": 422,
    "detail": "videoPrompt is required",
    "errors": [{"field": "videoPrompt", "message": "is required"}],
}
PROBLEM_EXAMPLES: dict[int, dict[str, Any]] = {
    401: {
        "title": "Unauthorized",
        "detail": "A valid bearer token of an active account is required.",
    },
    402: {"title": "Insufficient credits", "detail": "this run costs 24 credits; the balance is 3"},
    403: {"title": "Forbidden", "detail": "this account may not do this"},
    404: {"title": "Not found", "detail": "workflow 0f3a… not found"},
    409: {"title": "Run already ended", "detail": "workflow 0f3a… is completed"},
}


def problem_content(example: dict[str, Any]) -> dict[str, Any]:
    return {
        "application/problem+json": {
            "schema": {"$ref": "#/components/schemas/Problem"},
            "example": example,
        }
    }


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the problems a route may answer (core.api.openapi registers the
    Problem schema they refer to)."""
    return {
        status: {
            "description": Problem.__doc__,
            "content": problem_content(
                VALIDATION_EXAMPLE
                if status == 422
                else {"type": "about:blank", "status": status, **PROBLEM_EXAMPLES[status]}
            ),
        }
        for status in statuses
    }
