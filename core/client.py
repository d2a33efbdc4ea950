"""A Python client for Reelforge's HTTP API (httpx), for scripts, notebooks and other services.

    with ReelforgeClient("http://127.0.0.1:8000", token) as api:
        run = api.start("a red fox in fresh snow", "slow dolly in", video_config={"duration": "4s"})
        for event in api.stream(run["workflowId"]):
            print(event.kind, event.data)

`stream` reconnects by itself after a dropped connection, sending `Last-Event-ID`, so its events
arrive each once and in order however often the connection drops. Every answer other than
success raises ApiError with the server's problem details.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import EventSource
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from core.errors import ApiError

log = logging.getLogger(__name__)

ENDED = frozenset({"completed", "failed", "cancelled"})
EVENT_KINDS = frozenset({"run", "step", "final", "reset"})
WAIT_MAX_S = 60  # the most a `Prefer: wait` holds an answer on the server
# Answers that mean "not now" rather than "no": a stream retries them like a dropped connection.
_RECONNECT_STATUSES = frozenset({429, 502, 503, 504})


@dataclass(frozen=True)
class RunEvent:
    seq: int  # the run's event number; `reset` carries the newest when it was sent
    kind: str  # run | step | final | reset (`reset`: `data` is the whole status answer)
    data: dict[str, Any]

    @property
    def is_final(self) -> bool:
        return self.kind == "final"


class ReelforgeClient:
    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout_s: float = 30.0,
        reconnect_attempts: int = 8,
        reconnect_initial_wait_s: float = 0.2,
        reconnect_max_wait_s: float = 10.0,
    ) -> None:
        # The read timeout must outlast the server's ping interval (15 s by default): a stream
        # that hears nothing for longer is dead, and is reconnected.
        self._timeout_s = timeout_s
        self._http = httpx.Client(
            base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout_s
        )
        self._reconnect = Retrying(
            stop=stop_after_attempt(reconnect_attempts),
            wait=wait_exponential_jitter(
                multiplier=reconnect_initial_wait_s,
                jitter=reconnect_initial_wait_s,
                max=reconnect_max_wait_s,
            ),
            retry=retry_if_exception(_worth_reconnecting),
            reraise=True,
            before_sleep=_log_reconnect,
        )

    def __enter__(self) -> ReelforgeClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- runs -----------------------------------------------------------------------------------

    def start(
        self,
        image_prompt: str,
        video_prompt: str,
        *,
        idempotency_key: str | None = None,
        wait_s: int | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """Start a run. `options` are the request's other fields in Python's spelling
        (image_config, video_config, project_id, image_model, video_model); the same
        `idempotency_key` again returns the same run. `wait_s`: answer once it ended (or then)."""
        body = {"imagePrompt": image_prompt, "videoPrompt": video_prompt}
        body.update({_camel(name): value for name, value in options.items() if value is not None})
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._call("POST", "/api/workflow/start", json=body, headers=headers, wait_s=wait_s)

    def status(self, workflow_id: str, *, wait_s: int | None = None) -> dict[str, Any]:
        """The run and its steps; with `wait_s`, once it has ended or `wait_s` seconds passed."""
        return self._call("GET", f"/api/workflow/{workflow_id}/status", wait_s=wait_s)

    def cancel(self, workflow_id: str) -> dict[str, Any]:
        return self._call("POST", f"/api/workflow/{workflow_id}/cancel")

    def wait(self, workflow_id: str, timeout_s: float) -> dict[str, Any]:
        """The run once it has ended (held on the server: no polling loop here). Raises
        TimeoutError when it is still going after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            run = self.status(workflow_id, wait_s=max(0, min(WAIT_MAX_S, math.ceil(remaining))))
            if run["status"] in ENDED:
                return run
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"workflow {workflow_id} still {run['status']} after {timeout_s} s"
                )

    def runs(self, *, page_size: int = 25, **filters: Any) -> Iterator[dict[str, Any]]:
        """The caller's runs, newest first, following the pages (`status=["failed"]`, ...)."""
        params = {_camel(name): value for name, value in filters.items() if value is not None}
        params["limit"] = page_size
        while True:
            page = self._call("GET", "/api/workflows", params=params)
            yield from page["items"]
            if not page["nextCursor"]:
                return
            params["cursor"] = page["nextCursor"]

    # -- the stream -----------------------------------------------------------------------------

    def stream(self, workflow_id: str, *, last_event_id: int | None = None) -> Iterator[RunEvent]:
        """The run's events until its final one, from the start or after `last_event_id`.

        A connection that drops is opened again after the last event received; failures to
        open back off exponentially and give up after `reconnect_attempts` in a row.
        """
        cursor = None if last_event_id is None else str(last_event_id)
        while True:
            opened = self._reconnect(self._open_stream, workflow_id, cursor)
            if opened is None:  # 204: the run had already ended at our cursor
                return
            response, events = opened
            try:
                for event in events:
                    cursor = str(event.seq)
                    yield event
                    if event.is_final:
                        return
                log.info("Workflow %s - stream closed early; reconnecting", workflow_id)
            except httpx.TransportError as exc:
                log.info("Workflow %s - stream dropped (%s); reconnecting", workflow_id, exc)
            finally:
                response.close()

    def _open_stream(
        self, workflow_id: str, cursor: str | None
    ) -> tuple[httpx.Response, Iterator[RunEvent]] | None:
        """Open the stream and read up to its first event, so that a connection that fails
        before delivering anything counts as a failed attempt (and is backed off)."""
        headers = {"Accept": "text/event-stream"}
        if cursor is not None:
            headers["Last-Event-ID"] = cursor
        request = self._http.build_request(
            "GET", f"/api/workflow/{workflow_id}/stream", headers=headers
        )
        response = self._http.send(request, stream=True)
        try:
            if response.status_code == 204:
                response.close()
                return None
            if response.is_error:
                response.read()
                raise _api_error(response)
            events = _run_events(EventSource(response))
            first = next(events, None)
            if first is None:
                raise httpx.RemoteProtocolError("the stream closed before its first event")
        except BaseException:
            response.close()
            raise
        return response, itertools.chain([first], events)

    # -- plumbing -------------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        *,
        wait_s: int | None = None,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        headers = dict(headers or {})
        timeout = self._timeout_s
        if wait_s is not None:
            headers["Prefer"] = f"wait={wait_s}"
            timeout += wait_s
        response = self._http.request(method, path, headers=headers, timeout=timeout, **kwargs)
        if response.is_error:
            raise _api_error(response)
        return response.json()


def _run_events(source: EventSource) -> Iterator[RunEvent]:
    # httpx-sse also reports the blank line after a ping comment, as a nameless empty event.
    for sse in source.iter_sse():
        if sse.event in EVENT_KINDS:
            yield RunEvent(seq=int(sse.id), kind=sse.event, data=sse.json())


def _api_error(response: httpx.Response) -> ApiError:
    try:
        problem = response.json()
    except ValueError:
        problem = None
    if not isinstance(problem, dict):
        problem = {"title": response.reason_phrase, "status": response.status_code}
    return ApiError(response.status_code, problem)


def _worth_reconnecting(exc: BaseException) -> bool:
    if isinstance(exc, ApiError):
        return exc.status in _RECONNECT_STATUSES
    return isinstance(exc, httpx.TransportError)


def _log_reconnect(state: RetryCallState) -> None:
    log.warning(
        "Stream - connection attempt %d failed (%s); retrying in %.1f s",
        state.attempt_number,
        state.outcome.exception() if state.outcome else None,
        state.next_action.sleep if state.next_action else 0,
    )


def _camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(part.title() for part in rest)
