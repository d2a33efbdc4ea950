"""What the served OpenAPI document says beyond what FastAPI derives from the routes, in one
place rather than on each route: the Problem schema, the rate limit headers every answer
carries, the 429 every operation may answer, and the 400 for a body that is not JSON."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from core.api.responses import Problem, problem_content

_INTEGER = {"type": "integer", "minimum": 0}
HEADERS: dict[str, dict[str, Any]] = {
    "RateLimit-Limit": {
        "description": "Requests allowed in the window of the tightest budget this request "
        "counted against (API_RATE_LIMIT, or API_START_RATE_LIMIT for a start).",
        "schema": _INTEGER,
    },
    "RateLimit-Remaining": {
        "description": "Requests left in that window.",
        "schema": _INTEGER,
    },
    "RateLimit-Reset": {
        "description": "Seconds until the window frees a request.",
        "schema": _INTEGER,
    },
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "schema": {"type": "integer", "minimum": 1},
    },
}
RATE_LIMIT_HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")
TOO_MANY = {
    "description": "Over the rate limit: wait `Retry-After` seconds.",
    "headers": {name: {"$ref": f"#/components/headers/{name}"} for name in HEADERS},
    "content": problem_content(
        {
            "type": "about:blank",
            "title": "Too many requests",
            "status": 429,
            "detail": "At most 20 starts per 1 minute for this caller; try again in 12 s.",
        }
    ),
}


UNREADABLE_BODY = {
    "description": "The body is not JSON at all (a body that is JSON but wrong is a 422).",
    "content": problem_content(
        {
            "type": "about:blank",
            "title": "There was an error parsing the body",
            "status": 400,
            "detail": "There was an error parsing the body",
        }
    ),
}


def install(app: FastAPI) -> None:
    def document() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            _add_problem_schema(schema)
            _add_rate_limits(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = document  # type: ignore[method-assign]


def _add_problem_schema(schema: dict[str, Any]) -> None:
    problem = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(problem.pop("$defs", {}))
    schemas["Problem"] = problem


def _add_rate_limits(schema: dict[str, Any]) -> None:
    schema.setdefault("components", {})["headers"] = HEADERS
    for operations in schema["paths"].values():
        for operation in operations.values():
            responses = operation["responses"]
            responses.setdefault("429", TOO_MANY)
            if "requestBody" in operation:
                responses.setdefault("400", UNREADABLE_BODY)
            for answer in responses.values():
                headers = answer.setdefault("headers", {})
                for name in RATE_LIMIT_HEADERS:
                    headers.setdefault(name, {"$ref": f"#/components/headers/{name}"})
