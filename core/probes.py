"""A worker's HTTP side on METRICS_PORT: `/metrics` (Prometheus), `/livez` (the process is up)
and `/readyz` (its database and broker answer; 503 and the names of what failed otherwise).
A small WSGI app on a thread of the worker process, as prometheus-client's own server is."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

from core import health, metrics
from core.config import Settings
from core.db import Database, make_engine
from core.errors import ConfigurationError

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scrape never holds the worker's shutdown


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        return None  # a scrape every few seconds is not news for the worker's log


def probes_app(db: Database, settings: Settings) -> Callable[[dict, StartResponse], Iterable]:
    serve_metrics = make_wsgi_app(metrics.exposition(db, worker_stale_s=settings.heartbeat_stale_s))
    broker_url = settings.broker_url

    def app(environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return serve_metrics(environ, start_response)
        if path == "/livez":
            return _json(start_response, 200, {"live": True})
        if path == "/readyz":
            body = health.readiness_body(health.readiness(db, broker_url))
            return _json(start_response, 200 if body["ready"] else 503, body)
        return _json(start_response, 404, {"error": "not found"})

    return app


def _json(start_response: StartResponse, status: int, body: dict[str, Any]) -> list[bytes]:
    payload = json.dumps(body).encode()
    reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
    start_response(f"{status} {reason}", [("Content-Type", "application/json")])
    return [payload]


def serve(settings: Settings, port: int) -> Callable[[], None]:
    """Serve the probes on METRICS_HOST:`port` from a daemon thread, with a small pool of
    database connections of their own (a scrape never waits behind the runs). Returns stop."""
    db = Database(make_engine(settings.resolved_database_url, pool_size=2))
    try:
        server = make_server(
            settings.metrics_host,
            port,
            probes_app(db, settings),
            server_class=_Server,
            handler_class=_QuietHandler,
        )
    except OSError as exc:  # the port taken (another worker's?), or the host not ours
        db.dispose()
        raise ConfigurationError(
            f"METRICS_PORT {port} on METRICS_HOST {settings.metrics_host}: {exc.strerror}"
        ) from None
    thread = threading.Thread(target=server.serve_forever, name="reelforge-probes", daemon=True)
    thread.start()
    log.info("Worker - metrics and probes on http://%s:%d", settings.metrics_host, port)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        db.dispose()

    return stop
