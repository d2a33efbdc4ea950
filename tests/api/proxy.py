"""A TCP proxy on a free local port whose open connections a test can cut mid-answer: a real
dropped connection (the client sees the socket close), not an exception raised in the client."""

from __future__ import annotations

import socket
import threading
from types import TracebackType


class CuttableProxy:
    def __init__(self, target_port: int) -> None:
        self._target = ("127.0.0.1", target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.requests: list[bytes] = []  # the first bytes each connection sent: its request head
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self) -> None:
        """Close every connection open now, both ways; new ones are still accepted."""
        with self._lock:
            dropped, self._open = self._open, []
        for sock in dropped:
            _close(sock)

    def close(self) -> None:
        self.cut()
        self._listener.close()

    def __enter__(self) -> CuttableProxy:
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _b: TracebackType | None
    ) -> None:
        self.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # the listener was closed
                return
            upstream = socket.create_connection(self._target)
            with self._lock:
                self._open += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, from_client: bool) -> None:
        first = from_client
        try:
            while chunk := source.recv(65536):
                if first:
                    self.requests.append(chunk)
                    first = False
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            _close(sink)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
