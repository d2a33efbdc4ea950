"""Every error as RFC 9457 problem details (`application/problem+json`: type, title, status,
detail; a validation problem also lists each field with the message the pages show). Nothing
internal (a traceback, a library's exception text) ever leaves the server: an unexpected
exception is logged here and answered with a generic 500."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError as BodyValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.status import HTTP_500_INTERNAL_SERVER_ERROR
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import (
    BudgetExceededError,
    InsufficientCreditsError,
    NotFoundError,
    PermissionDeniedError,
    RequestValidationError,
)
from core.schemas import problems_of

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
# Where FastAPI locates a parameter; the pages name fields without it.
_PARAMETER_SOURCES = ("body", "query", "path", "header")


class ApiProblem(Exception):
    """An answer other than success, raised in a route or a dependency."""

    def __init__(
        self, status: int, title: str, detail: str, *, headers: dict[str, str] | None = None
    ) -> None:
        self.status, self.title, self.detail, self.headers = status, title, detail, headers
        super().__init__(detail)


def problem(
    status: int,
    title: str,
    detail: str,
    *,
    kind: str = "about:blank",
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> JSONResponse:
    body = {"type": kind, "title": title, "status": status, "detail": detail, **extensions}
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def validation_problem(problems: dict[str, str]) -> JSONResponse:
    return problem(
        422,
        "Invalid request",
        "; ".join(f"{field} {message}" for field, message in problems.items()),
        kind="urn:reelforge:problem:validation",
        errors=[{"field": field, "message": message} for field, message in problems.items()],
    )


def _unlocated(errors: Any) -> list[dict[str, Any]]:
    return [
        {**e, "loc": e["loc"][1:]} if e["loc"][:1] and e["loc"][0] in _PARAMETER_SOURCES else e
        for e in errors
    ]


async def _on_body(_: Request, exc: BodyValidationError) -> JSONResponse:
    return validation_problem(problems_of(_unlocated(exc.errors())))


async def _on_request(_: Request, exc: RequestValidationError) -> JSONResponse:
    return validation_problem(exc.problems)


async def _on_credits(_: Request, exc: InsufficientCreditsError) -> JSONResponse:
    # 402, not 409: the request is sound and nothing about the run conflicts; what is missing
    # is payment, and the same request succeeds once credits are granted.
    return problem(
        402,
        "Insufficient credits",
        str(exc),
        kind="urn:reelforge:problem:insufficient-credits",
        needed=exc.needed,
        balance=exc.balance,
    )


async def _on_budget(_: Request, exc: BudgetExceededError) -> JSONResponse:
    # 403, not 402: the caller can pay (the balance covers the run), and granting credits would
    # not help; a spending policy an admin set refuses it until the month ends or the admin
    # raises the budget. The extensions say which budget, what is left and when it resets.
    return problem(
        403,
        "Monthly budget exceeded",
        str(exc),
        kind="urn:reelforge:problem:budget-exceeded",
        budget=exc.scope,
        limit=exc.limit,
        left=exc.left,
        needed=exc.needed,
        resetsAt=exc.resets_at.isoformat(),
    )


async def _on_not_found(_: Request, exc: NotFoundError) -> JSONResponse:
    return problem(404, "Not found", str(exc))


async def _on_denied(_: Request, exc: PermissionDeniedError) -> JSONResponse:
    return problem(403, "Forbidden", str(exc))


async def _on_api_problem(_: Request, exc: ApiProblem) -> JSONResponse:
    return problem(exc.status, exc.title, exc.detail, headers=exc.headers)


async def _on_http(_: Request, exc: HTTPException) -> JSONResponse:
    """Starlette's own answers (an unknown path, a wrong method) in the same shape."""
    detail = exc.detail if isinstance(exc.detail, str) else ""
    return problem(exc.status_code, detail or "Error", detail, headers=exc.headers)


class _CatchAll:
    """Answers an unexpected exception with a generic 500 problem and keeps it in the server.
    (Starlette's own handler for Exception answers and then re-raises, after which uvicorn
    drops the connection a client may be reusing.)"""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        answered = False

        async def send_tracked(message: Message) -> None:
            nonlocal answered
            answered = answered or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_tracked)
        except Exception:
            log.exception("API - %s %s failed", scope["method"], scope["path"])
            if answered:  # too late for another answer
                raise
            internal = problem(
                HTTP_500_INTERNAL_SERVER_ERROR,
                "Internal server error",
                "The server could not complete the request; it has been logged.",
            )
            await internal(scope, receive, send)


def install(app: FastAPI) -> None:
    handlers: dict[type[Exception], Any] = {
        BodyValidationError: _on_body,
        RequestValidationError: _on_request,
        InsufficientCreditsError: _on_credits,
        BudgetExceededError: _on_budget,
        NotFoundError: _on_not_found,
        PermissionDeniedError: _on_denied,
        ApiProblem: _on_api_problem,
        HTTPException: _on_http,
    }
    for exc_type, handler in handlers.items():
        app.add_exception_handler(exc_type, handler)
    app.add_middleware(_CatchAll)
