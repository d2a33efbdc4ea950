"""Schemathesis against the served OpenAPI document: a real server, a valid token, generated
requests for every operation (valid and invalid ones), then the stateful walk along the
document's links (start → status / cancel). No answer may be a server error, use a status,
content type or header the document does not list, or break the documented schema."""

from __future__ import annotations

from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.schemas import APIOperation, BaseSchema
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
EXAMPLES_PER_OPERATION = 12
SCENARIOS = 12
SETTINGS = settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
    derandomize=True,  # the same requests on every run: a finding reproduces
)
CALLS: Counter[str] = Counter()
# The event stream stays open until its run ends and its body is Server-Sent Events, not a
# JSON document to check: tests/api/test_stream_api.py proves it.
HELD_OPEN = {"/api/workflow/{workflow_id}/stream"}


@pytest.fixture
def served(start_api) -> tuple[BaseSchema, dict[str, str]]:
    """The API with slow offline providers on one worker thread: generated starts queue up
    instead of encoding videos, and cancels find them still running."""
    api = start_api(latency_s=1, WORKER_THREADS="1")
    account = api.account(credits=1_000_000)
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
    # `Prefer: wait=0`: a generated `wait=60` would hold an answer for a minute behind the
    # queued runs; the waiting itself is proven in test_stream_api.py.
    return schema, {"Authorization": f"Bearer {account.token}", "Prefer": "wait=0"}


def test_every_answer_is_as_documented_for_generated_and_linked_requests(served):
    """One server for all three passes (its start is most of the cost)."""
    schema, bearer = served
    operations = [
        operation
        for operation in (result.ok() for result in schema.get_all_operations())
        if operation.path not in HELD_OPEN
    ]
    assert len(operations) >= 7
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        for operation in operations:
            _fuzz(operation, mode, bearer)
    _walk_the_links(schema, bearer)
    print("\nschemathesis calls:", dict(CALLS), "total", sum(CALLS.values()))
    followed = [
        label for label in CALLS if label.startswith("stateful") and "{workflow_id}" in label
    ]
    assert followed  # a started run's links were followed to its status or cancel


# (schemathesis.pytest.from_fixture cannot run under pytest 9, so each operation's strategy
# is driven by Hypothesis here directly.)
def _fuzz(operation: APIOperation, mode: GenerationMode, bearer: dict[str, str]) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @SETTINGS
    def answers_as_documented(case):
        CALLS[f"{mode} {case.operation.label}"] += 1
        case.call_and_validate(headers=bearer, checks=CHECKS)

    try:
        answers_as_documented()
    except Unsatisfiable:
        # Nothing about it can be wrong (the health check: no input, a token optional).
        assert mode is GenerationMode.NEGATIVE and operation.path == "/api/workflow/health"


def _walk_the_links(schema: BaseSchema, bearer: dict[str, str]) -> None:
    class Walk(schema.as_state_machine()):
        def get_call_kwargs(self, case):
            CALLS[f"stateful {case.operation.label}"] += 1
            return {"headers": bearer}

        def validate_response(self, response, case, **kwargs):
            case.validate_response(response, checks=CHECKS)

    Walk.run(settings=settings(SETTINGS, max_examples=SCENARIOS, stateful_step_count=4))
