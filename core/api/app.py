"""The FastAPI app over one Runtime: the same composition root as the pages and the CLI."""

from __future__ import annotations

from fastapi import FastAPI

from core.api import problems
from core.api.routes import health, me, workflows
from core.runtime import Runtime

DESCRIPTION = """Start, watch and cancel Reelforge runs over HTTP with the dashboard's accounts,
credits and guarantees. Authenticate with `Authorization: Bearer <token>` (create one with
`python -m core tokens create --user EMAIL`). Every error is an RFC 9457 problem."""


def create_app(runtime: Runtime) -> FastAPI:
    """The app for `runtime`, which the caller starts and shuts down."""
    app = FastAPI(title="Reelforge API", version="1", description=DESCRIPTION)
    app.state.runtime = runtime
    for module in (workflows, me, health):
        app.include_router(module.router)
    problems.install(app)
    return app
