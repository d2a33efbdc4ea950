"""Per-token rate limits with the `limits` library: every request counts against API_RATE_LIMIT,
a start also against the lower API_START_RATE_LIMIT. A token's budget is keyed by the token; a
request without a usable token by its client address. With REDIS_URL every API process counts
in one place (a moving window in Redis); without it, each process counts in its own memory.

Answers carry the IETF RateLimit-Limit / RateLimit-Remaining / RateLimit-Reset headers of the
tightest budget involved, and a refusal is a 429 problem with Retry-After.

When the counting store does not answer, requests pass (fail open) and a warning is logged:
the limiter protects capacity, not correctness (credits are reserved atomically in the database
whatever the rate), so a Redis outage should not become an API outage.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from limits import RateLimitItem, parse
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.config import Settings

log = logging.getLogger(__name__)

# Seconds a Redis call may take before the request passes without counting.
STORE_TIMEOUT_S = 0.5
# At most one "store down" warning per this many seconds, not one per request.
WARNING_INTERVAL_S = 60.0
QUOTAS_STATE = "rate_limit_quotas"


@dataclass(frozen=True)
class Quota:
    """One budget as a request left it."""

    limit: int
    remaining: int
    reset_after_s: int  # until the oldest counted request leaves the window
    allowed: bool


class RateLimiter:
    def __init__(self, settings: Settings) -> None:
        if settings.redis_url:
            storage = storage_from_string(
                settings.redis_url,
                socket_timeout=STORE_TIMEOUT_S,
                socket_connect_timeout=STORE_TIMEOUT_S,
            )
        else:
            storage = storage_from_string("memory://")
        self.shared = settings.redis_url is not None
        self._strategy = MovingWindowRateLimiter(storage)
        self.requests = parse(settings.api_rate_limit)
        self.starts = parse(settings.api_start_rate_limit)
        self._warned_at = -math.inf

    def hit(self, item: RateLimitItem, namespace: str, caller: str) -> Quota | None:
        """Count one request of `caller` against `item`; None when the store is down."""
        try:
            allowed = self._strategy.hit(item, namespace, caller)
            stats = self._strategy.get_window_stats(item, namespace, caller)
        except Exception:  # noqa: BLE001 - any store failure: fail open, see the module doc
            self._warn_store_down()
            return None
        reset_after_s = max(1, math.ceil(stats.reset_time - time.time()))
        return Quota(item.amount, stats.remaining, reset_after_s, allowed)

    def _warn_store_down(self) -> None:
        now = time.monotonic()
        if now - self._warned_at >= WARNING_INTERVAL_S:
            self._warned_at = now
            log.warning("Rate limits - the store does not answer; requests pass uncounted")


def headers(quotas: list[Quota]) -> dict[str, str]:
    """The tightest budget's headers (and Retry-After once it is spent)."""
    if not quotas:
        return {}
    tightest = min(quotas, key=lambda q: (q.allowed, q.remaining))
    answer = {
        "RateLimit-Limit": str(tightest.limit),
        "RateLimit-Remaining": str(tightest.remaining),
        "RateLimit-Reset": str(tightest.reset_after_s),
    }
    if not tightest.allowed:
        answer["Retry-After"] = str(tightest.reset_after_s)
    return answer


class RateLimitHeaders:
    """Puts the quotas a request's dependencies counted on whatever answer it gets (a success,
    a problem, a stream), so no route has to."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                quotas = scope.get("state", {}).get(QUOTAS_STATE, [])
                extra = [
                    (name.lower().encode(), value.encode())
                    for name, value in headers(quotas).items()
                ]
                known = {name for name, _ in message.get("headers", [])}
                added = [(n, v) for n, v in extra if n not in known]
                message = {**message, "headers": [*message.get("headers", []), *added]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
