"""A run's live stream: its event log (core.run_events) as Server-Sent Events.

Each event's `id:` is the run's event seq, so a client that reconnects with `Last-Event-ID`
(or `?lastEventId=` where a browser cannot set the header) gets each event it missed exactly
once, in order. A cursor this run never gave out gets a `reset` event carrying the full status
first. The stream ends after the `final` event; one that had already seen it gets 204, which
also tells a browser's EventSource to stop reconnecting.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from core import metrics
from core.api.deps import CurrentUser, RuntimeDep, WatcherDep
from core.api.responses import problems
from core.api.routes.workflows import snapshot, status_body
from core.api.watcher import RunEventWatcher

router = APIRouter(prefix="/api", tags=["workflows"], responses=problems(401, 404, 422))

_MAX_CURSOR_DIGITS = 18


@dataclass(frozen=True)
class Opening:
    """Where a stream starts, decided from the client's cursor and the run's log."""

    after: int  # send the events after this seq
    reset: bool  # send the full state first: the cursor is not one this run gave out
    done: bool  # nothing will follow: the run ended at or before `after`


def opening(cursor: str | None, last_seq: int, ended: bool) -> Opening:
    after = 0 if cursor is None else _seq(cursor)
    # A run ended before the log existed has no events at all: its state is all there is.
    reset = after is None or after > last_seq or (ended and last_seq == 0)
    start = last_seq if reset or after is None else after
    return Opening(after=start, reset=reset, done=ended and start >= last_seq)


def _seq(cursor: str) -> int | None:
    if cursor.isascii() and cursor.isdigit() and len(cursor) <= _MAX_CURSOR_DIGITS:
        return int(cursor)
    return None


@router.get(
    "/workflow/{workflow_id}/stream",
    name="run_stream",
    response_class=EventSourceResponse,
    response_model=None,
    responses={
        200: {
            "description": "Events `run`, `step` and `final` (then the stream closes), each "
            "with `id:` the run's event seq and `data:` JSON; `reset` (the status answer) "
            "when the cursor was unknown; a `: ping` comment while idle.",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        204: {"description": "The run has ended and the cursor is at its final event."},
    },
)
async def run_stream(
    workflow_id: str,
    runtime: RuntimeDep,
    watcher: WatcherDep,
    user: CurrentUser,
    request: Request,
    last_event_id: Annotated[
        str | None, Header(description="The id of the last event received, to resume after it.")
    ] = None,
    last_event_id_query: Annotated[
        str | None, Query(alias="lastEventId", description="As `Last-Event-ID`, for browsers.")
    ] = None,
) -> Response:
    """The run's events from the start, or after the event a reconnecting client names."""
    cursor = last_event_id if last_event_id is not None else last_event_id_query
    last_seq, detail = await run_in_threadpool(snapshot, runtime, workflow_id, user)
    start = opening(cursor, last_seq, detail.view.status.is_terminal)
    if start.done and not start.reset:
        return Response(status_code=204)
    state = None
    if start.reset:
        state = status_body(detail, runtime, request.app).model_dump(mode="json", by_alias=True)
    return EventSourceResponse(
        _events(watcher, workflow_id, start, state),
        ping=runtime.settings.stream_ping_s,
        ping_message_factory=lambda: ServerSentEvent(comment="ping"),
        headers={"Cache-Control": "no-cache"},
    )


async def _events(
    watcher: RunEventWatcher, workflow_id: str, start: Opening, state: dict[str, Any] | None
) -> AsyncIterator[ServerSentEvent]:
    with metrics.sse_stream_open():
        if state is not None:
            yield ServerSentEvent(_json(state), event="reset", id=str(start.after))
        if start.done:
            return
        async with watcher.subscribe(workflow_id, start.after) as subscription:
            while True:
                event = await subscription.next()
                yield ServerSentEvent(
                    _json(event.payload), event=event.kind.value, id=str(event.seq)
                )
                if event.kind.is_final:
                    return


def _json(payload: dict[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":"))
