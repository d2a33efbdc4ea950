"""The FastAPI app over one Runtime: the same composition root as the pages and the CLI."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from core.api import problems
from core.api.routes import health, me, stream, workflows
from core.api.watcher import RunEventWatcher
from core.runtime import Runtime

DESCRIPTION = """Start, watch and cancel Reelforge runs over HTTP with the dashboard's accounts,
credits and guarantees. Authenticate with `Authorization: Bearer <token>` (create one with
`python -m core tokens create --user EMAIL`). Every error is an RFC 9457 problem."""


def create_app(runtime: Runtime) -> FastAPI:
    """The app for `runtime`, which the caller starts and shuts down."""
    watcher = RunEventWatcher(runtime.db, runtime.settings.stream_poll_interval_s)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await watcher.start()
        try:
            yield
        finally:
            await watcher.stop()

    app = FastAPI(title="Reelforge API", version="1", description=DESCRIPTION, lifespan=lifespan)
    app.state.runtime = runtime
    app.state.watcher = watcher
    for module in (workflows, stream, me, health):
        app.include_router(module.router)
    problems.install(app)
    return app
