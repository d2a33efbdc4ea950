"""What every twin shares: a threaded HTTP server on an ephemeral 127.0.0.1 port, a scripted
fault queue per operation, and a record of every request for assertions."""

from __future__ import annotations

import json
import socket
import ssl
import sys
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    json: Any = None
    body: bytes = b""


@dataclass(frozen=True)
class Fault:
    """One scripted misbehaviour: an error answer, a slow answer, or a dropped connection."""

    status: int = 500
    body: Any = None  # dict/list -> JSON, str/bytes sent as-is
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # sleep before answering (to trigger client timeouts)
    drop: bool = False  # close the connection without answering


class FaultQueue:
    def __init__(self) -> None:
        self._queues: dict[str, deque[Fault]] = defaultdict(deque)
        self._lock = threading.Lock()

    def push(self, operation: str, fault: Fault, times: int = 1) -> None:
        with self._lock:
            self._queues[operation].extend([fault] * times)

    def pop(self, operation: str) -> Fault | None:
        with self._lock:
            queue = self._queues.get(operation)
            return queue.popleft() if queue else None

    def clear(self) -> None:
        with self._lock:
            self._queues.clear()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, sock: socket.socket, handler: type, ssl_context: ssl.SSLContext | None):
        super().__init__(sock.getsockname()[:2], handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.ssl_context = ssl_context
        self.twin: Any = None

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ssl.SSLError | ConnectionError | TimeoutError):
            return  # a client hung up mid-answer; expected around dropped-connection faults
        super().handle_error(request, client_address)

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, addr = self.socket.accept()
        if self.ssl_context is not None:
            # Handshake in the handler thread (see JsonHandler.setup), not in the accept loop, so
            # a client that rejects our certificate cannot stall other connections.
            conn = self.ssl_context.wrap_socket(
                conn, server_side=True, do_handshake_on_connect=False
            )
        return conn, addr


def listening_socket() -> socket.socket:
    """A socket already bound to 127.0.0.1 on a free port and listening: the port is ours from
    this moment, with no window for another process to take it."""
    sock = socket.create_server(("127.0.0.1", 0))
    sock.listen(64)
    return sock


class TwinServer:
    """Runs a handler class in a background thread; `twin` is reachable from handlers."""

    scheme = "http"

    def __init__(
        self,
        handler: type[JsonHandler],
        *,
        sock: socket.socket | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._sock = sock or listening_socket()
        self._server = _Server(self._sock, handler, ssl_context)
        self._server.twin = self
        self._thread: threading.Thread | None = None
        self.scheme = "https" if ssl_context else "http"
        self.requests: list[Recorded] = []
        self.faults = FaultQueue()
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        return self._sock.getsockname()[1]

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def origin(self) -> str:
        return f"{self.scheme}://{self.host}"

    def start(self) -> TwinServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=type(self).__name__,
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> TwinServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def record(self, request: Recorded) -> None:
        with self._lock:
            self.requests.append(request)

    def recorded(self, method: str | None = None, path_prefix: str = "") -> list[Recorded]:
        with self._lock:
            return [
                r
                for r in self.requests
                if (method is None or r.method == method) and r.path.startswith(path_prefix)
            ]

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
        self.faults.clear()


class JsonHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive (as the SDKs expect), JSON helpers and fault handling."""

    protocol_version = "HTTP/1.1"
    # Buffer the answer so headers and body leave in one segment; written separately they meet
    # the client's delayed ACK (Nagle) and every request costs ~40 ms. handle_one_request flushes.
    wbufsize = 1 << 16
    server: _Server

    @property
    def twin(self) -> Any:
        return self.server.twin

    def setup(self) -> None:
        super().setup()
        self._handshake_failed = False
        if isinstance(self.connection, ssl.SSLSocket):
            try:
                self.connection.do_handshake()
            except (ssl.SSLError, OSError):
                self._handshake_failed = True

    def handle(self) -> None:
        if self._handshake_failed:
            return
        try:
            super().handle()
        except (ssl.SSLError, ConnectionError, TimeoutError):
            pass  # a client hung up or refused our certificate; nothing to answer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def read_request(self) -> Recorded:
        split = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parsed: Any = None
        if body and "json" in (self.headers.get("Content-Type") or ""):
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
        recorded = Recorded(
            method=self.command,
            path=split.path,
            query={k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()},
            headers={k.lower(): v for k, v in self.headers.items()},
            json=parsed,
            body=body,
        )
        self.twin.record(recorded)
        return recorded

    def apply_fault(self, operation: str) -> bool:
        """Answer with the next scripted fault for `operation`; True when one was applied."""
        fault = self.twin.faults.pop(operation)
        if fault is None:
            return False
        if fault.delay_s:
            time.sleep(fault.delay_s)
        if fault.drop:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return True
        self.send_body(fault.status, fault.body, fault.headers)
        return True

    def send_body(
        self,
        status: int,
        body: Any,
        headers: dict[str, str] | None = None,
        content_type: str | None = None,
    ) -> None:
        if isinstance(body, bytes):
            payload, kind = body, content_type or "application/octet-stream"
        elif isinstance(body, str):
            payload, kind = body.encode(), content_type or "text/plain; charset=utf-8"
        elif body is None:
            payload, kind = b"", content_type
        else:
            payload, kind = json.dumps(body).encode(), content_type or "application/json"
        self.send_response(status)
        if kind:
            self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
