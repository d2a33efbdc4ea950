"""The FastAPI app over one Runtime: the same composition root as the pages and the CLI."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.routing import APIRoute

from core import metrics, telemetry
from core.api import openapi, problems
from core.api.deps import rate_limited, sound_parameters
from core.api.ratelimit import RateLimiter, RateLimitHeaders
from core.api.routes import health, me, probes, stream, workflows
from core.api.watcher import RunEventWatcher
from core.runtime import Runtime

DESCRIPTION = """Start, watch and cancel Reelforge runs over HTTP with the dashboard's accounts,
credits and guarantees. Authenticate with `Authorization: Bearer <token>` (create one on the
dashboard's API tokens page or with `python -m core tokens create --user EMAIL`). Every error is
an RFC 9457 problem (`application/problem+json`).

Each token has a budget of requests (`API_RATE_LIMIT`, and a lower `API_START_RATE_LIMIT` for
starts); every answer says where it stands in the `RateLimit-*` headers, and a request over it
gets a 429 with `Retry-After`."""


def _operation_id(route: APIRoute) -> str:
    """The route's function name, so OpenAPI links and clients can name an operation."""
    return route.name


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

    app = FastAPI(
        title="Reelforge API",
        version="1",
        description=DESCRIPTION,
        generate_unique_id_function=_operation_id,
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    app.state.watcher = watcher
    app.state.limiter = RateLimiter(runtime.settings)
    app.state.metrics = metrics.exposition(
        runtime.db, worker_stale_s=runtime.settings.heartbeat_stale_s
    )
    for module in (workflows, stream, me, health):
        app.include_router(
            module.router, dependencies=[Depends(rate_limited), Depends(sound_parameters)]
        )
    app.include_router(probes.router)
    telemetry.instrument_api(app)
    problems.install(app)
    app.add_middleware(RateLimitHeaders)
    openapi.install(app)
    return app
