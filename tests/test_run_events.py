"""The run-event log on SQLite and Postgres: every state change appends an event in its own
transaction, numbered per run without gaps even under concurrent writers, ending with `final`."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select

from core import run_events, workflows
from core.api.routes.stream import Opening, opening
from core.errors import FailureCategory, PermanentProviderError
from core.models import RunEvent
from core.providers import build_providers
from core.run_events import EventKind, RunEventView
from core.schemas import parse_request
from core.states import STEP_ORDER
from tests.fakes import Spy
from tests.helpers import load
from tests.test_orchestrator import SHORT, engine, with_providers


def logged(db, workflow_id: str) -> list[RunEventView]:
    with db.read() as session:
        events = run_events.events_after(session, {workflow_id: 0})
        assert run_events.last_seq(session, workflow_id) == len(events)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))  # gap-free, from 1
    return events


def step_states(events: list[RunEventView]) -> list[tuple[str, str]]:
    return [(e.payload["name"], e.payload["state"]) for e in events if e.kind is EventKind.STEP]


def test_a_completed_run_logs_each_change_in_order_and_ends_with_final(settings, make_user, db):
    user = make_user(credits=100)
    runtime = engine(settings)
    workflow_id, _ = runtime.start_workflow(user, parse_request(SHORT))

    events = logged(db, workflow_id)
    assert [e.payload for e in events[:2]] == [
        {"status": "queued"},
        {"status": "running", "recoveries": 0},
    ]
    # Each step starts, then completes, before the next one starts (progress may come between).
    steps = step_states(events)
    starts = [steps.index((step.value, "processing")) for step in STEP_ORDER]
    ends = [steps.index((step.value, "completed")) for step in STEP_ORDER]
    assert sorted(starts + ends) == [i for pair in zip(starts, ends, strict=True) for i in pair]
    assert events[-1].kind is EventKind.FINAL
    assert events[-1].payload == {"status": "completed", "error": None, "refundedCredits": 0}
    assert [e.kind for e in events].count(EventKind.FINAL) == 1
    completed = [e.payload for e in events if e.payload.get("state") == "completed"]
    assert all(p["progress"] == 100 and p["finishedAt"] for p in completed)
    runtime.shutdown()


def test_a_failed_run_logs_the_failed_step_the_skipped_ones_and_the_refund(settings, make_user, db):
    user = make_user(credits=100)
    refusal = PermanentProviderError("rejected", category=FailureCategory.CONTENT_POLICY)
    image = Spy(build_providers(settings).image, generate=[refusal])
    runtime = engine(settings, with_providers(settings, image=image))
    workflow_id, _ = runtime.start_workflow(user, parse_request(SHORT))

    events = logged(db, workflow_id)
    ends = [t for t in step_states(events) if t[1] in ("failed", "skipped")]
    assert ends == [("generate_image", "failed")] + [(s.value, "skipped") for s in STEP_ORDER[2:]]
    final = events[-1]
    assert final.kind is EventKind.FINAL
    assert final.payload["status"] == "failed"
    assert final.payload["error"] == {
        "code": "content_policy",
        "message": "rejected",
        "step": "generate_image",
    }
    assert final.payload["refundedCredits"] == load(runtime, workflow_id).cost_credits
    runtime.shutdown()


def test_cancelling_a_queued_run_logs_the_request_the_cancelled_steps_and_final(
    settings, make_user, db
):
    user = make_user(credits=100)
    runtime = engine(settings)
    workflow_id = workflows.start_workflow(
        db, user_id=user.id, request=parse_request(SHORT), client_key="k", actor="t"
    ).workflow_id
    runtime.cancel(workflow_id, user)
    runtime.cancel(workflow_id, user)  # ended: nothing more is logged

    events = logged(db, workflow_id)
    assert [(e.kind, e.payload.get("status")) for e in events[:2]] == [
        (EventKind.RUN, "queued"),
        (EventKind.RUN, "queued"),
    ]
    assert events[1].payload["cancelRequested"] is True
    assert step_states(events) == [(s.value, "cancelled") for s in STEP_ORDER]
    assert events[-1].payload["status"] == "cancelled"
    assert events[-1].payload["refundedCredits"] > 0
    assert len(events) == 2 + len(STEP_ORDER) + 1
    runtime.shutdown()


def test_concurrent_writers_to_one_run_get_gap_free_unique_seqs(db, make_user):
    user = make_user(credits=100)
    workflow_id = workflows.start_workflow(
        db, user_id=user.id, request=parse_request(SHORT), client_key="k", actor="t"
    ).workflow_id
    writers, each = 8, 10
    start = threading.Barrier(writers)
    failures: list[BaseException] = []

    def write(writer: int) -> None:
        try:
            start.wait()
            for n in range(each):
                with db.begin() as session:
                    run_events.append_event(
                        session, workflow_id, EventKind.STEP, {"writer": writer, "n": n}
                    )
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert failures == []
    events = logged(db, workflow_id)  # asserts seqs 1..N without a gap
    assert len(events) == 1 + writers * each
    # Each writer's own events keep the order it wrote them in.
    for writer in range(writers):
        mine = [e.payload["n"] for e in events if e.payload.get("writer") == writer]
        assert mine == list(range(each))
    with db.read() as session:
        seqs = session.execute(select(RunEvent.seq).where(RunEvent.workflow_id == workflow_id))
        assert sorted(seqs.scalars()) == list(range(1, len(events) + 1))


def test_one_read_returns_each_runs_events_after_its_own_cursor(db, make_user):
    user = make_user(credits=100)
    runs = [
        workflows.start_workflow(
            db, user_id=user.id, request=parse_request(SHORT), client_key=key, actor="t"
        ).workflow_id
        for key in ("a", "b")
    ]
    with db.begin() as session:
        for n in range(3):
            for workflow_id in runs:
                run_events.append_event(session, workflow_id, EventKind.STEP, {"n": n})
    with db.read() as session:
        events = run_events.events_after(session, {runs[0]: 2, runs[1]: 3})
    assert [(e.workflow_id, e.seq) for e in events] == sorted(
        [(runs[0], 3), (runs[0], 4), (runs[1], 4)]
    )


@pytest.mark.parametrize(
    ("cursor", "last_seq", "ended", "expected"),
    [
        (None, 5, False, Opening(after=0, reset=False, done=False)),
        ("3", 5, False, Opening(after=3, reset=False, done=False)),
        ("5", 5, True, Opening(after=5, reset=False, done=True)),  # saw the final event
        ("3", 5, True, Opening(after=3, reset=False, done=False)),  # missed the end
        ("9", 5, False, Opening(after=5, reset=True, done=False)),  # from the future
        ("-1", 5, False, Opening(after=5, reset=True, done=False)),
        ("abc", 5, True, Opening(after=5, reset=True, done=True)),
        ("٣", 5, False, Opening(after=5, reset=True, done=False)),  # a non-ASCII digit
        (None, 0, True, Opening(after=0, reset=True, done=True)),  # ended before the log
    ],
)
def test_a_stream_opens_after_a_known_cursor_and_resets_on_any_other(
    cursor, last_seq, ended, expected
):
    assert opening(cursor, last_seq, ended) == expected
