"""The OpenAPI document, built in-process: every operation lists its problems with an example,
the rate limit headers and the 429, and start documents its Idempotency-Key and its links."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from core.api import create_app
from core.config import Settings
from core.runtime import Runtime

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def document(sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The document of an app over an engine that is never started (no server, no runs)."""
    data_dir = tmp_path_factory.mktemp("openapi")
    settings = Settings(
        _env_file=None, data_dir=data_dir, database_url=f"sqlite:///{sqlite_template}"
    )
    runtime = Runtime(settings, upgrade=False)
    yield create_app(runtime).openapi()
    runtime.shutdown()


def _operations(document: dict):
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            yield f"{method.upper()} {path}", operation


def test_every_error_is_a_problem_with_an_example_and_every_answer_has_rate_headers(document):
    for label, operation in _operations(document):
        responses = operation["responses"]
        assert "429" in responses, label
        assert set(responses["429"]["headers"]) >= {"Retry-After", "RateLimit-Reset"}, label
        for code, answer in responses.items():
            assert answer.get("description"), (label, code)
            assert {"RateLimit-Limit", "RateLimit-Remaining"} <= set(answer["headers"]), label
            if code.startswith("4"):
                assert set(answer["content"]) == {"application/problem+json"}, (label, code)
                problem = answer["content"]["application/problem+json"]
                assert problem["schema"] == {"$ref": "#/components/schemas/Problem"}
                assert problem["example"]["status"] == int(code), (label, code)
    assert {"type", "title", "status", "detail"} <= set(
        document["components"]["schemas"]["Problem"]["required"]
    )


def test_start_documents_its_key_its_body_and_where_a_run_leads(document):
    start = document["paths"]["/api/workflow/start"]["post"]
    key = next(p for p in start["parameters"] if p["name"].lower() == "idempotency-key")
    assert "24 h" in key["description"] and key["schema"]["anyOf"][0]["maxLength"] == 200
    assert key.get("examples") or key["schema"].get("examples")
    assert start["requestBody"]["content"]["application/json"]["examples"]
    links = start["responses"]["202"]["links"]
    assert {link["operationId"] for link in links.values()} == {"run_status", "cancel_run"}
    assert "Location" in start["responses"]["202"]["headers"]
    status = document["paths"]["/api/workflow/{workflow_id}/status"]["get"]
    assert "Retry-After" in status["responses"]["200"]["headers"]


def test_the_list_documents_its_filters(document):
    listing = document["paths"]["/api/workflows"]["get"]
    names = {p["name"] for p in listing["parameters"]}
    assert names >= {"status", "projectId", "projectName", "createdAfter", "createdBefore"}
    assert names >= {"all", "user", "limit", "cursor"}
    assert "403" in listing["responses"]


def test_the_readme_links_the_docs_page():
    assert "/docs" in (ROOT / "README.md").read_text()
