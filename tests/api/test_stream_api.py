"""The run stream and `Prefer: wait` end to end: a real server, real HTTP, the run-event log in
the database as the reference, offline providers slowed down so a run has many events."""

from __future__ import annotations

import json

import httpx
from httpx_sse import connect_sse

from core import run_events
from core.client import ReelforgeClient
from tests.api.proxy import CuttableProxy
from tests.api.test_workflows_api import BODY, _is_problem, _start

LATENCY_S = 0.15  # per offline provider call: a run lasts a couple of seconds


def logged(api, workflow_id: str) -> list[tuple[int, str, dict]]:
    """The run's events as stored: what every stream of it must deliver, once, in order."""
    with api.db.read() as session:
        events = run_events.events_after(session, {workflow_id: 0})
    return [(e.seq, e.kind.value, e.payload) for e in events]


def read(client: httpx.Client, workflow_id: str, *, until: int | None = None, **headers: str):
    """The stream's events (seq, kind, data), up to the final one or the `until`-th; with the
    raw response, for its headers."""
    received = []
    with connect_sse(client, "GET", f"/api/workflow/{workflow_id}/stream", headers=headers) as s:
        for sse in s.iter_sse():
            if sse.event:  # httpx-sse reports the blank line after a ping as a nameless event
                received.append((int(sse.id), sse.event, sse.json()))
            if sse.event == "final" or len(received) == until:
                break
    return received, s.response


def test_a_stream_delivers_every_event_of_a_run_in_order_and_closes_after_final(start_api):
    api = start_api(latency_s=LATENCY_S, STREAM_PING_S="0.2")
    alice = api.account()
    run = _start(alice.client).json()
    assert run["links"]["stream"] == f"/api/workflow/{run['workflowId']}/stream"

    lines = []
    with alice.client.stream("GET", run["links"]["stream"]) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-accel-buffering"] == "no"
        assert response.headers["cache-control"] == "no-cache"
        lines = list(response.iter_lines())  # ends only when the server closes the stream

    received = _parse(lines)
    assert received == logged(api, run["workflowId"])
    kinds = [kind for _, kind, _ in received]
    assert kinds[0] == "run" and kinds[-1] == "final" and kinds.count("final") == 1
    assert received[-1][2]["status"] == "completed"
    assert kinds.count("step") > 2 * 6  # starts, completions and progress in between
    assert ": ping" in lines


def _parse(lines: list[str]) -> list[tuple[int, str, dict]]:
    events, fields = [], {}
    for line in lines:
        if not line:
            if "event" in fields:
                events.append((int(fields["id"]), fields["event"], json.loads(fields["data"])))
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            fields[name] = value
    return events


def test_a_stream_resumed_with_last_event_id_gets_each_missed_event_once_in_order(start_api):
    api = start_api(latency_s=LATENCY_S)
    alice = api.account()
    workflow_id = _start(alice.client).json()["workflowId"]

    first, _ = read(alice.client, workflow_id, until=4)  # then the connection is closed
    rest, _ = read(alice.client, workflow_id, **{"Last-Event-ID": str(first[-1][0])})

    assert first + rest == logged(api, workflow_id)
    assert rest[-1][2]["status"] == "completed"
    # Resuming after the final event: nothing more will come, and the answer says so.
    after_end = alice.client.get(
        f"/api/workflow/{workflow_id}/stream", headers={"Last-Event-ID": str(rest[-1][0])}
    )
    assert after_end.status_code == 204


def test_the_client_reconnects_by_itself_after_a_dropped_connection_and_misses_nothing(
    start_api,
):
    api = start_api(latency_s=LATENCY_S)
    alice = api.account()
    port = int(api.url.rsplit(":", 1)[1])
    with (
        CuttableProxy(port) as proxy,
        ReelforgeClient(proxy.url, alice.token, reconnect_initial_wait_s=0) as client,
    ):
        workflow_id = client.start(BODY["imagePrompt"], BODY["videoPrompt"], **_options())[
            "workflowId"
        ]
        received = []
        for event in client.stream(workflow_id):
            received.append((event.seq, event.kind, event.data))
            if len(received) == 3:
                proxy.cut()

    assert received == logged(api, workflow_id)
    assert received[-1][1] == "final"
    resumed = [r for r in proxy.requests if b"last-event-id:" in r.lower()]
    assert resumed, "the client never reconnected"
    assert int(resumed[0].lower().split(b"last-event-id: ")[1].split(b"\r\n")[0]) >= 3


def _options() -> dict:
    return {"image_config": BODY["imageConfig"], "video_config": BODY["videoConfig"]}


def test_an_unknown_cursor_gets_a_reset_with_the_full_status_then_the_stream_goes_on(api):
    alice = api.account()
    started = _start(alice.client, **{"Prefer": "wait=30"})
    assert started.headers["preference-applied"] == "wait=30"
    assert started.json()["status"] == "completed"  # held until the run ended
    workflow_id = started.json()["workflowId"]
    last_seq = logged(api, workflow_id)[-1][0]

    for cursor in ("999", "not-a-number"):
        received, _ = read(alice.client, workflow_id, **{"Last-Event-ID": cursor})
        assert [(seq, kind) for seq, kind, _ in received] == [(last_seq, "reset")]
        reset = received[0][2]
        assert reset == alice.client.get(f"/api/workflow/{workflow_id}/status").json()
        assert reset["status"] == "completed" and len(reset["steps"]) == 6
    # Browsers cannot set the header on EventSource: the query parameter does the same.
    via_query = alice.client.get(f"/api/workflow/{workflow_id}/stream?lastEventId={last_seq}")
    assert via_query.status_code == 204


def test_another_users_stream_looks_missing(api):
    alice, bob = api.account(), api.account()
    workflow_id = _start(alice.client).json()["workflowId"]
    _is_problem(bob.client.get(f"/api/workflow/{workflow_id}/stream"), 404)
    _is_problem(bob.client.get("/api/workflow/no-such-run/stream"), 404)
    _is_problem(api.client().get(f"/api/workflow/{workflow_id}/stream"), 401)


def test_prefer_wait_on_status_holds_the_answer_until_the_run_ends(start_api):
    api = start_api(latency_s=LATENCY_S)
    alice = api.account()
    workflow_id = _start(alice.client).json()["workflowId"]

    held = alice.client.get(
        f"/api/workflow/{workflow_id}/status", headers={"Prefer": "wait=600"}, timeout=90
    )
    assert held.headers["preference-applied"] == "wait=60"  # capped
    assert held.json()["status"] == "completed" and "retry-after" not in held.headers
