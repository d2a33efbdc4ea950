"""For Prometheus and the process supervisor: `/metrics`, `/livez` (the process answers) and
`/readyz` (its database, and its broker with EXECUTOR=celery, answer; 503 naming what failed
otherwise). Anonymous, outside the rate limits, and not in the OpenAPI document: they are the
operator's, not a client's."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from core import health
from core.api.deps import RuntimeDep

router = APIRouter(include_in_schema=False)


@router.get("/metrics")
def prometheus_metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics), media_type=CONTENT_TYPE_LATEST)


@router.get("/livez")
def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/readyz")
def ready(runtime: RuntimeDep) -> JSONResponse:
    settings = runtime.settings
    broker = settings.broker_url if settings.executor == "celery" else None
    body = health.readiness_body(health.readiness(runtime.db, broker))
    return JSONResponse(body, status_code=200 if body["ready"] else 503)
