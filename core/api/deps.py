"""The dependencies every route shares, declared once: the process's Runtime and the user a
bearer token stands for."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from core import tokens
from core.api.problems import ApiProblem
from core.api.watcher import RunEventWatcher
from core.auth import UserView
from core.clock import utcnow
from core.runtime import Runtime

_bearer = HTTPBearer(
    auto_error=False, description="A token from `python -m core tokens create --user EMAIL`."
)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(_runtime)]


def _watcher(request: Request) -> RunEventWatcher:
    return request.app.state.watcher


WatcherDep = Annotated[RunEventWatcher, Depends(_watcher)]


def _current_user(runtime: RuntimeDep, credentials: Credentials) -> UserView:
    bearer = None
    if credentials is not None:
        with runtime.db.read() as session:
            bearer = tokens.authenticate(session, credentials.credentials)
    if bearer is not None and bearer.use_is_news(utcnow()):
        with runtime.db.begin() as session:
            tokens.record_use(session, bearer)
    if bearer is None:
        raise ApiProblem(
            401,
            "Unauthorized",
            "A valid bearer token of an active account is required.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return bearer.user


def _optional_user(runtime: RuntimeDep, credentials: Credentials) -> UserView | None:
    """No token: an anonymous caller. A token that is wrong is still a 401."""
    return None if credentials is None else _current_user(runtime, credentials)


CurrentUser = Annotated[UserView, Depends(_current_user)]
OptionalUser = Annotated[UserView | None, Depends(_optional_user)]
