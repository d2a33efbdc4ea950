"""The dependencies every route shares, declared once: the process's Runtime, the user a bearer
token stands for, the rate limits counted against that token (core.api.ratelimit), and the
refusal of parameters no operation could use."""

from __future__ import annotations

from typing import Annotated, Any, get_args, get_origin

from fastapi import Depends, Request
from fastapi.dependencies.models import Dependant
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from limits import RateLimitItem

from core import tokens
from core.api.problems import ApiProblem
from core.api.ratelimit import QUOTAS_STATE, RateLimiter
from core.api.watcher import RunEventWatcher
from core.auth import UserView
from core.clock import utcnow
from core.errors import RequestValidationError
from core.runtime import Runtime

_bearer = HTTPBearer(
    auto_error=False, description="A token from `python -m core tokens create --user EMAIL`."
)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(_runtime)]


def _token_bearer(runtime: RuntimeDep, credentials: Credentials) -> tokens.Bearer | None:
    """Whom the request's token stands for; None without a token or with an unusable one.
    (FastAPI solves it once per request, for the rate limits and the user alike.)"""
    if credentials is None:
        return None
    with runtime.db.read() as session:
        return tokens.authenticate(session, credentials.credentials)


BearerDep = Annotated[tokens.Bearer | None, Depends(_token_bearer)]


def _watcher(request: Request) -> RunEventWatcher:
    return request.app.state.watcher


WatcherDep = Annotated[RunEventWatcher, Depends(_watcher)]


def _current_user(runtime: RuntimeDep, bearer: BearerDep) -> UserView:
    if bearer is None:
        raise ApiProblem(
            401,
            "Unauthorized",
            "A valid bearer token of an active account is required.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if bearer.use_is_news(utcnow()):
        with runtime.db.begin() as session:
            tokens.record_use(session, bearer)
    return bearer.user


def _optional_user(
    runtime: RuntimeDep, credentials: Credentials, bearer: BearerDep
) -> UserView | None:
    """No token: an anonymous caller. A token that is wrong is still a 401."""
    return None if credentials is None else _current_user(runtime, bearer)


CurrentUser = Annotated[UserView, Depends(_current_user)]
OptionalUser = Annotated[UserView | None, Depends(_optional_user)]


def _count(request: Request, bearer: tokens.Bearer | None, item: RateLimitItem, kind: str) -> None:
    """Count the request against `item` for its token (or, without a usable one, its client
    address); over the limit, a 429."""
    limiter: RateLimiter = request.app.state.limiter
    address = request.client.host if request.client else "unknown"
    caller = f"token:{bearer.token_id}" if bearer else f"address:{address}"
    quota = limiter.hit(item, kind, caller)
    if quota is None:
        return
    # request.state lives in the ASGI scope, where ratelimit.RateLimitHeaders reads it.
    setattr(request.state, QUOTAS_STATE, [*getattr(request.state, QUOTAS_STATE, []), quota])
    if not quota.allowed:
        raise ApiProblem(
            429,
            "Too many requests",
            f"At most {item.amount} {kind} per {_period(item)} for this caller; "
            f"try again in {quota.reset_after_s} s.",
        )


def sound_parameters(request: Request) -> None:
    """Every query parameter is one the operation has (a typo such as `stauts=failed` must not
    quietly answer with an unfiltered list), a single-valued one comes once (which of two would
    count?), and no parameter holds a NUL, which Postgres cannot take in a string. Each is a
    422 naming the parameter."""
    declared = _query_parameters(request.scope["route"].dependant)
    problems: dict[str, str] = {}
    for name in request.query_params:
        if name not in declared:
            problems[name or "(unnamed)"] = "is not a parameter of this operation"
        elif not declared[name] and len(request.query_params.getlist(name)) > 1:
            problems[name] = "is given more than once"
    for name, value in [*request.query_params.multi_items(), *request.path_params.items()]:
        if "\x00" in str(value):
            problems.setdefault(name or "(unnamed)", "contains a NUL character")
    if problems:
        raise RequestValidationError(problems)


def _query_parameters(dependant: Dependant) -> dict[str, bool]:
    """{name: takes several values} for the query parameters of an operation."""
    names = {
        field.alias: _takes_several(field.field_info.annotation) for field in dependant.query_params
    }
    for dependency in dependant.dependencies:
        names.update(_query_parameters(dependency))
    return names


def _takes_several(annotation: Any) -> bool:
    """list[X] or list[X] | None."""
    return any(get_origin(a) in (list, tuple, set) for a in (annotation, *get_args(annotation)))


def _period(item: RateLimitItem) -> str:
    unit = item.GRANULARITY.name
    return unit if item.multiples == 1 else f"{item.multiples} {unit}s"


def rate_limited(request: Request, bearer: BearerDep) -> None:
    """Every request, against API_RATE_LIMIT."""
    _count(request, bearer, request.app.state.limiter.requests, "requests")


def start_rate_limited(request: Request, bearer: BearerDep) -> None:
    """A start, also against the lower API_START_RATE_LIMIT."""
    _count(request, bearer, request.app.state.limiter.starts, "starts")
