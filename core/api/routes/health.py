"""The engine's health: database, storage and providers, checked on the parts the API runs."""

from __future__ import annotations

from fastapi import APIRouter, Response

from core import health
from core.api.deps import OptionalUser, RuntimeDep
from core.api.responses import Health, HealthCheck, problems

router = APIRouter(prefix="/api", tags=["health"], responses=problems(401, 422))


@router.get(
    "/workflow/health",
    response_model=Health,
    responses={503: {"model": Health, "description": "At least one check failed."}},
    # A token is optional here: [{}] is OpenAPI for "anonymous too".
    openapi_extra={"security": [{}, {"HTTPBearer": []}]},
)
def check_health(runtime: RuntimeDep, user: OptionalUser, response: Response) -> Health:
    """Which checks pass, for anyone (a load balancer has no token); latencies and details,
    which name hosts and buckets, only for an admin's token. 503 when any check fails."""
    checks = health.check_all(runtime)
    detailed = user is not None and user.is_admin
    ok = all(c.ok for c in checks)
    if not ok:
        response.status_code = 503
    return Health(
        ok=ok,
        checks=[
            HealthCheck(name=c.name, ok=c.ok)
            if not detailed
            else HealthCheck(name=c.name, ok=c.ok, latency_ms=c.latency_ms, detail=c.detail)
            for c in checks
        ],
    )
