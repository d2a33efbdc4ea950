"""An S3 twin: moto's standalone server on an ephemeral port, fronted by a thin WSGI layer that
adds what moto lacks for our tests: presigned-URL expiry (as S3 enforces it), scripted faults
and a request record."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import BaseWSGIServer, make_server

from tests.twins.base import Fault, FaultQueue, Recorded

ACCESS_KEY, SECRET_KEY = "twin-access-key", "twin-secret-key"  # moto accepts any pair


class _QuietHandler(MotoRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


def _s3_error(status: int, code: str, message: str, extra: str = "") -> tuple[int, bytes]:
    xml = (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
        f"<Message>{message}</Message>{extra}<RequestId>TWIN</RequestId></Error>"
    )
    return status, xml.encode()


class S3Twin:
    def __init__(self, bucket: str = "reelforge-twin") -> None:
        self.bucket = bucket
        self.region = "us-east-1"
        self.requests: list[Recorded] = []
        self.faults = FaultQueue()
        self._lock = threading.Lock()
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._client: Any = None

    @property
    def endpoint_url(self) -> str:
        assert self._server is not None, "start() the twin first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> S3Twin:
        app = DomainDispatcherApplication(create_backend_app)
        self._server = make_server(
            "127.0.0.1", 0, self._wsgi(app), threaded=True, request_handler=_QuietHandler
        )
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.client().create_bucket(Bucket=self.bucket)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def client(self) -> Any:
        """A boto3 client for arranging and inspecting state (explicit keys: no env needed)."""
        if self._client is None:
            self._client = self._new_client()
        return self._client

    def _new_client(self) -> Any:
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=Config(s3={"addressing_style": "path"}),
        )

    def recorded(self, method: str | None = None, path_prefix: str = "") -> list[Recorded]:
        with self._lock:
            return [
                r
                for r in self.requests
                if (method is None or r.method == method) and r.path.startswith(path_prefix)
            ]

    def reset(self) -> None:
        """Empty the bucket (recreating it if something reset moto's global state), then forget
        the requests that took and any pending faults."""
        client = self.client()
        try:
            client.head_bucket(Bucket=self.bucket)
        except ClientError:
            client.create_bucket(Bucket=self.bucket)
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            for obj in page.get("Contents", []):
                client.delete_object(Bucket=self.bucket, Key=obj["Key"])
        with self._lock:
            self.requests.clear()
        self.faults.clear()

    def fail_next(
        self,
        status: int = 503,
        code: str = "SlowDown",
        message: str = "Please reduce your request rate.",
        *,
        retry_after: float | None = None,
        times: int = 1,
    ) -> None:
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        self.faults.push("any", Fault(status, (code, message), headers), times=times)

    def _wsgi(self, app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
        def middleware(environ: dict[str, Any], start_response: Callable[..., Any]):
            query = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
            headers = {
                k[5:].replace("_", "-").lower(): v
                for k, v in environ.items()
                if k.startswith("HTTP_")
            }
            with self._lock:
                self.requests.append(
                    Recorded(environ["REQUEST_METHOD"], environ["PATH_INFO"], query, headers)
                )
            fault = self.faults.pop("any")
            if fault is not None:
                code, message = fault.body
                status, body = _s3_error(fault.status, code, message)
                return _respond(start_response, status, body, fault.headers)
            if _presign_expired(query):
                expires = query["X-Amz-Expires"]
                status, body = _s3_error(
                    403,
                    "AccessDenied",
                    "Request has expired",
                    f"<X-Amz-Expires>{expires}</X-Amz-Expires>",
                )
                return _respond(start_response, status, body, {})
            return app(environ, start_response)

        return middleware


def _presign_expired(query: dict[str, str]) -> bool:
    # S3 compares at one-second resolution: a URL signed at 10:00:00.9 with X-Amz-Expires=1 is
    # refused from 10:00:02 on. moto accepts expired URLs, so the twin enforces this itself.
    if "X-Amz-Signature" not in query or "X-Amz-Date" not in query:
        return False
    signed = datetime.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    return int(time.time()) > signed.timestamp() + int(query.get("X-Amz-Expires", "604800"))


def _respond(start_response: Callable[..., Any], status: int, body: bytes, headers: dict[str, str]):
    reasons = {403: "Forbidden", 404: "Not Found", 500: "Internal Server Error"}
    reasons |= {503: "Service Unavailable"}
    start_response(
        f"{status} {reasons.get(status, 'Error')}",
        [("Content-Type", "application/xml"), ("Content-Length", str(len(body))), *headers.items()],
    )
    return [body]
