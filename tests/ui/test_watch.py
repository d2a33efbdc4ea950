"""The watch page: the seed's WorkflowVisualizer, in every state a run can be in."""

from __future__ import annotations

import streamlit as st
from sqlalchemy import update
from sqlalchemy.exc import OperationalError

from core import credits
from core.auth import Role
from core.models import Workflow
from core.schemas import parse_request
from core.states import StepStatus, WorkflowStatus
from core.ui import nav
from core.views import run
from tests.ui.conftest import (
    PAYLOAD,
    app_for,
    end_running,
    load,
    queued_run,
    refreshed,
    running_run,
    texts,
    wait_until_done,
)


def watch(user, workflow_id: str | None = None):
    query = {"id": workflow_id} if workflow_id else {}
    return app_for(user, page=nav.WATCH.path, **query)


def step_badges(at) -> list[str]:
    """The status shown on each step card, in pipeline order."""
    cards = [m.value for m in at.markdown if "-badge[" in m.value and "**" in m.value]
    return [card.rsplit(" ", 1)[-1].rstrip("]") for card in cards]


def test_without_an_id_the_page_offers_the_users_runs(engine, make_user, runtime):
    user = make_user()
    workflow_id = queued_run(runtime, user)
    at = watch(user)
    assert not at.exception
    at.button(key=f"watch_pick_{workflow_id}").click().run()
    assert at.query_params["id"] == workflow_id
    assert f"Run {workflow_id[:8]}" in texts(at)


def test_an_unknown_id_gets_a_clear_message(engine, make_user):
    at = watch(make_user(), "does-not-exist")
    assert not at.exception
    assert "There is no such run in your account" in at.error[0].value
    assert "does-not-exist" in [t.value for t in at.text]


def test_someone_elses_run_looks_exactly_like_a_missing_one(engine, make_user, runtime):
    owner, stranger = make_user(), make_user()
    workflow_id = queued_run(runtime, owner)
    at = watch(stranger, workflow_id)
    assert not at.exception
    assert "There is no such run in your account" in at.error[0].value
    assert workflow_id in [t.value for t in at.text]
    assert not at.button  # no cancel, no retry


def test_an_admin_can_watch_anyones_run(engine, make_user, runtime):
    owner, admin = make_user(), make_user(role=Role.ADMIN)
    workflow_id = queued_run(runtime, owner)
    at = watch(admin, workflow_id)
    assert not at.exception
    assert "someone else's run (admin view)" in texts(at)


def test_a_queued_run_shows_six_pending_steps_and_can_be_cancelled(engine, make_user, runtime):
    user = make_user()
    at = watch(user, queued_run(runtime, user))
    assert not at.exception
    assert step_badges(at) == ["pending"] * 6
    assert "Waiting for a free worker" in texts(at)
    assert not at.button(key="watch_cancel").disabled


def test_a_run_in_the_providers_queue_shows_its_position_apart_from_generating(
    engine, make_user, runtime
):
    user = make_user()
    workflow_id = running_run(
        runtime, user, {"request_id": "offline-x", "phase": "queued", "queue_position": 2}
    )
    at = watch(user, workflow_id)
    assert not at.exception
    shown = texts(at)
    assert "In the video provider's queue (2 ahead)" in shown
    assert step_badges(at) == ["completed"] * 3 + ["processing", "pending", "pending"]
    assert "attempt 1" in shown
    end_running(runtime, workflow_id, WorkflowStatus.FAILED, "test over")


def test_a_generating_run_says_so(engine, make_user, runtime):
    user = make_user()
    workflow_id = running_run(runtime, user, {"request_id": "offline-x", "phase": "in_progress"})
    at = watch(user, workflow_id)
    assert "The provider is generating the video" in texts(at)
    end_running(runtime, workflow_id, WorkflowStatus.FAILED, "test over")


def test_the_eta_comes_from_this_installations_finished_runs(
    engine, make_user, runtime, finished_run
):
    st.cache_data.clear()  # the timings are cached for a minute; the finished run is newer
    user = make_user()
    workflow_id = running_run(runtime, user, {"phase": "in_progress"})
    at = watch(user, workflow_id)
    assert "left (from this installation's runs)" in texts(at)
    end_running(runtime, workflow_id, WorkflowStatus.FAILED, "test over")


def test_a_finished_run_shows_the_video_the_image_and_downloads(engine, finished_run, runtime):
    owner, workflow_id = finished_run
    at = watch(owner, workflow_id)
    assert not at.exception
    assert step_badges(at) == ["completed"] * 6
    assert len(at.get("video")) == 1
    assert len(at.get("image")) == 1
    labels = [b.label for b in at.get("download_button")]
    assert labels == ["Download video", "Download image"]
    assert not at.button(key="watch_retry").disabled
    assert at.get("plotly_chart")
    # One click spends credits, so the button itself says how many.
    assert (
        at.button(key="watch_retry").label
        == f"Run again · {load(runtime, workflow_id).cost_credits} cr"
    )


def test_a_failed_run_shows_its_receipt_with_the_refund(engine, make_user, runtime):
    user = make_user()
    workflow_id, _ = runtime.start_workflow(
        user, parse_request({**PAYLOAD, "imagePrompt": "a scene of gore"}), client_key="gore"
    )
    view = wait_until_done(runtime, workflow_id)
    assert view.status is WorkflowStatus.FAILED
    at = watch(user, workflow_id)
    assert not at.exception
    shown = texts(at)
    assert "Run failed" in shown
    assert "Moderation refused the request" in shown
    assert f"Refunded {view.cost_credits} credits" in shown
    with runtime.db.read() as session:
        entry = credits.refund_entry(session, workflow_id)
    assert f"Ledger entry #{entry.id}" in shown
    assert refreshed(runtime, user).balance == 100


def test_cancel_asks_first_then_stops_the_run_and_shows_the_refund(engine, make_user, runtime):
    user = make_user()
    workflow_id = queued_run(runtime, user)
    at = watch(user, workflow_id)
    at.button(key="watch_cancel").click().run()
    assert not at.exception
    assert load(runtime, workflow_id).status is WorkflowStatus.QUEUED  # only asked so far
    at.button(key="watch_cancel_confirm").click().run()
    assert not at.exception
    assert load(runtime, workflow_id).status is WorkflowStatus.CANCELLED
    at.run()
    shown = texts(at)
    assert "Run cancelled" in shown
    assert f"Refunded {load(runtime, workflow_id).cost_credits} credits" in shown
    assert step_badges(at) == ["cancelled"] * 6
    assert refreshed(runtime, user).balance == 100


def test_keeping_a_run_after_asking_to_cancel_changes_nothing(engine, make_user, runtime):
    user = make_user()
    workflow_id = queued_run(runtime, user)
    at = watch(user, workflow_id)
    at.button(key="watch_cancel").click().run()
    at.button(key="watch_cancel_keep").click().run()
    assert load(runtime, workflow_id).status is WorkflowStatus.QUEUED
    assert not at.exception


def test_a_cancelled_run_says_whether_the_provider_confirmed(engine, make_user, runtime):
    user = make_user()
    confirmed = running_run(runtime, user, {"phase": "in_progress"})
    end_running(
        runtime,
        confirmed,
        WorkflowStatus.CANCELLED,
        "cancelled by the user; the provider confirmed the cancellation",
        provider_cancel_confirmed=True,
    )
    doubtful = running_run(runtime, user, {"phase": "in_progress"})
    end_running(
        runtime,
        doubtful,
        WorkflowStatus.CANCELLED,
        "cancelled by the user; the provider did not confirm the cancellation",
        provider_cancel_confirmed=False,
    )
    assert "The video provider confirmed it stopped the job" in texts(watch(user, confirmed))
    assert "did not confirm it stopped the job" in texts(watch(user, doubtful))
    view = load(runtime, confirmed)
    assert view.step("generate_video").status is StepStatus.CANCELLED


def test_retry_starts_a_new_run_with_the_same_request(engine, make_user, runtime):
    user = make_user()
    failed = running_run(runtime, user, {"phase": "in_progress"})
    end_running(runtime, failed, WorkflowStatus.FAILED, "The video provider failed the job")
    at = watch(user, failed)
    at.button(key="watch_retry").click().run()
    assert not at.exception
    new_id = at.query_params["id"]
    assert new_id != failed
    assert load(runtime, new_id).request == load(runtime, failed).request
    runtime.cancel(new_id, user)


def test_duplicate_opens_the_create_page_filled_in(engine, finished_run):
    owner, workflow_id = finished_run
    at = watch(owner, workflow_id)
    at.button(key="watch_duplicate").click().run()
    assert not at.exception
    assert at.text_area(key="create_image_prompt").value == PAYLOAD["imagePrompt"]


def test_a_database_error_while_polling_shows_a_banner_not_a_traceback(
    engine, make_user, runtime, monkeypatch
):
    user = make_user()
    workflow_id = queued_run(runtime, user)
    at = watch(user, workflow_id)

    def unavailable(*args, **kwargs):
        raise OperationalError("SELECT 1", {}, Exception("database is locked"))

    # What a poll reads (the fragment's reruns don't re-read the signed-in account).
    monkeypatch.setattr(run, "load_run", unavailable)
    at.run()
    monkeypatch.undo()
    assert not at.exception
    assert "Lost contact with the database" in texts(at)
    assert step_badges(at) == ["pending"] * 6  # the last state it saw
    at.run()
    assert "Lost contact" not in texts(at)


def overall_bar(at):
    return next(bar.proto for bar in at.get("progress") if "steps done" in bar.proto.text)


def test_a_run_failed_at_its_first_step_says_where_and_counts_no_step_as_done(
    engine, make_user, runtime
):
    user = make_user()
    workflow_id, _ = runtime.start_workflow(
        user,
        parse_request({**PAYLOAD, "imagePrompt": "a scene of gore"}),
        client_key="gore-progress",
    )
    assert wait_until_done(runtime, workflow_id).status is WorkflowStatus.FAILED
    bar = overall_bar(watch(user, workflow_id))
    assert bar.text == "Failed at Validation & safety · **0 of 6 steps done**"
    assert bar.value == 0


def test_a_run_cancelled_while_queued_reports_no_progress(engine, make_user, runtime):
    user = make_user()
    workflow_id = queued_run(runtime, user)
    runtime.cancel(workflow_id, user)
    bar = overall_bar(watch(user, workflow_id))
    assert bar.text.endswith("· **0 of 6 steps done**")
    assert bar.value == 0


def test_a_traced_run_shows_its_trace_id_to_hand_an_operator_and_an_untraced_one_none(
    engine, make_user, runtime
):
    user = make_user()
    traced, untraced = queued_run(runtime, user), queued_run(runtime, user)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    with runtime.db.begin() as session:
        session.execute(update(Workflow).where(Workflow.id == traced).values(trace_id=trace_id))
    at = watch(user, traced)
    assert not at.exception
    assert f"trace `{trace_id}`" in texts(at)
    at = watch(user, untraced)
    assert not at.exception
    assert "trace" not in " ".join(c.value for c in at.caption)
