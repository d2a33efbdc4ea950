"""The watch and library queries: listing and searching runs, the gallery, step timings and
the ETA, the live phase and the receipt of a failed or cancelled run."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import timedelta

import pytest

from core import workflows
from core.auth import Role
from core.models import Asset, Project, WorkflowStep, utcnow
from core.schemas import parse_request
from core.states import StepName, StepStatus, WorkflowStatus
from core.views import eta, history, watch
from core.views.history import RunFilter

REQUEST = {"imagePrompt": "a red fox in snow", "videoPrompt": "slow pan"}
RUNNER = "runner-test"


def start(db, user, client_key: str | None = None, **overrides) -> str:
    workflow_id, _ = workflows.start_workflow(
        db,
        user_id=user.id,
        request=parse_request({**REQUEST, **overrides}),
        client_key=client_key or uuid.uuid4().hex,
        actor=user.email,
    )
    return workflow_id


def finish(db, workflow_id: str, seconds: dict[StepName, float], *, status=StepStatus.COMPLETED):
    """Walk a run through its steps with the given durations (by rewriting the timestamps)."""
    with db.begin() as session:
        workflows.claim(session, workflow_id, RUNNER, stale_before=utcnow())
        deadline = utcnow() + timedelta(hours=1)
        for step in StepName:
            workflows.start_step(session, workflow_id, step, RUNNER, deadline_at=deadline)
            workflows.complete_step(session, workflow_id, step, RUNNER, {})
        workflows.complete_run(session, workflow_id, RUNNER)
        for row in session.query(WorkflowStep).filter_by(workflow_id=workflow_id):
            started = utcnow() - timedelta(minutes=5)
            row.started_at = started
            row.finished_at = started + timedelta(seconds=seconds.get(StepName(row.name), 1.0))


def test_a_user_lists_only_their_runs_and_an_admin_may_list_all(db, make_user):
    alice, bob = make_user(), make_user()
    admin = make_user(role=Role.ADMIN)
    mine = start(db, alice)
    theirs = start(db, bob)
    with db.read() as session:
        assert [r.id for r in history.list_runs(session, alice, RunFilter()).rows] == [mine]
        assert {r.id for r in history.list_runs(session, alice, RunFilter(everyone=True)).rows} == {
            mine
        }  # "everyone" means nothing for a non-admin
        every = history.list_runs(session, admin, RunFilter(everyone=True))
    assert {mine, theirs} <= {r.id for r in every.rows}
    assert every.rows[0].owner_email in (alice.email, bob.email)


def test_search_matches_words_in_either_prompt_or_an_id_prefix(db, make_user):
    user = make_user()
    fox = start(db, user)
    owl = start(db, user, imagePrompt="an owl", videoPrompt="Tilt up at NIGHT")
    with db.read() as session:

        def found(text):
            return {r.id for r in history.list_runs(session, user, RunFilter(search=text)).rows}

        assert found("night owl") == {owl}
        assert found("FOX") == {fox}
        assert found(owl[:5]) == {owl}
        assert found("%") == set()


def test_filters_by_status_project_period_and_batch_and_pages(db, make_user):
    user = make_user()
    with db.begin() as session:
        project = Project(user_id=user.id, name="P")
        session.add(project)
        session.flush()
        project_id = project.id
    in_project = start(db, user, projectId=project_id)
    batch = [start(db, user, client_key=f"batch-key-{i}") for i in (1, 2)]
    with db.read() as session:
        assert [
            r.id for r in history.list_runs(session, user, RunFilter(project_id=project_id)).rows
        ] == [in_project]
        assert {
            r.id for r in history.list_runs(session, user, RunFilter(batch="batch-key")).rows
        } == set(batch)
        queued = RunFilter(statuses=(WorkflowStatus.QUEUED,))
        page = history.list_runs(session, user, queued, limit=2, offset=2)
        assert page.total == 3 and len(page.rows) == 1
        future = RunFilter(since=utcnow() + timedelta(minutes=1))
        assert history.list_runs(session, user, future).total == 0
        counts = history.status_counts(session, user, queued)
    assert counts[WorkflowStatus.QUEUED] == 3 and counts[WorkflowStatus.COMPLETED] == 0


def test_the_gallery_holds_finished_runs_with_their_assets(db, make_user):
    user = make_user()
    done, waiting = start(db, user), start(db, user)
    finish(db, done, {})
    with db.begin() as session:
        for kind in ("image", "video"):
            session.add(
                Asset(
                    workflow_id=done,
                    user_id=user.id,
                    kind=kind,
                    storage_backend="local",
                    storage_key=f"k/{kind}",
                    content_type="x",
                    size_bytes=1,
                    sha256="0" * 64,
                )
            )
    with db.read() as session:
        items, total = history.gallery(session, user, RunFilter())
        active = history.active_runs(session, user)
    assert total == 1 and items[0].run.id == done
    assert items[0].video.storage_key == "k/video" and items[0].image.storage_key == "k/image"
    assert [r.id for r in active] == [waiting]


def test_step_timings_are_medians_over_recent_completed_runs(db, make_user):
    user = make_user()
    for video_s in (10.0, 20.0, 60.0):
        finish(db, start(db, user), {StepName.GENERATE_VIDEO: video_s})
    with db.read() as session:
        timings = eta.step_timings(session)
    assert timings.runs == 3
    assert timings.medians[StepName.GENERATE_VIDEO] == pytest.approx(20.0)
    assert timings.medians[StepName.VALIDATE] == pytest.approx(1.0)


def test_the_eta_adds_what_is_left_of_the_running_step_to_the_steps_after_it(db, make_user):
    user = make_user()
    workflow_id = start(db, user)
    with db.read() as session:
        view = workflows.load_workflow(session, workflow_id)
    medians = {step: 10.0 for step in StepName}
    timings = eta.StepTimings(medians, runs=5)
    assert eta.eta_s(view, timings) == pytest.approx(60.0)
    now = utcnow()
    steps = list(view.steps)
    steps[0] = replace(steps[0], status=StepStatus.COMPLETED)
    steps[1] = replace(
        steps[1], status=StepStatus.PROCESSING, started_at=now - timedelta(seconds=4), progress=50
    )
    running = replace(view, status=WorkflowStatus.RUNNING, steps=tuple(steps))
    assert eta.eta_s(running, timings, now) == pytest.approx(6.0 + 40.0)
    slow = list(steps)
    slow[1] = replace(steps[1], started_at=now - timedelta(seconds=30), progress=75)
    overdue = replace(running, steps=tuple(slow))
    assert eta.eta_s(overdue, timings, now) == pytest.approx(10.0 + 40.0)  # 30 s at 75 %
    assert eta.eta_s(view, eta.StepTimings({}, 0)) is None
    assert eta.eta_s(replace(view, status=WorkflowStatus.COMPLETED), timings) is None


def _with_video_step(view, output):
    steps = tuple(
        replace(s, status=StepStatus.COMPLETED) if s.position < 3 else s for s in view.steps
    )
    steps = tuple(
        replace(s, status=StepStatus.PROCESSING, output=output)
        if s.name is StepName.GENERATE_VIDEO
        else s
        for s in steps
    )
    return replace(view, status=WorkflowStatus.RUNNING, steps=steps)


def test_the_live_phase_keeps_the_providers_queue_apart(db, make_user):
    user = make_user()
    with db.read() as session:
        view = workflows.load_workflow(session, start(db, user))
    assert watch.live_phase(view).phase is watch.Phase.WAITING
    queued = watch.live_phase(_with_video_step(view, {"phase": "queued", "queue_position": 3}))
    assert (queued.phase, queued.queue_position) == (watch.Phase.PROVIDER_QUEUE, 3)
    assert queued.label == "In the video provider's queue (3 ahead)"
    first = watch.live_phase(_with_video_step(view, {"phase": "queued", "queue_position": 0}))
    assert first.label == "In the video provider's queue (next in line)"
    generating = watch.live_phase(_with_video_step(view, {"phase": "in_progress"}))
    assert generating.phase is watch.Phase.GENERATING_VIDEO
    assert watch.live_phase(_with_video_step(view, {})).phase is watch.Phase.SUBMITTING
    cancelling = replace(_with_video_step(view, {}), cancel_requested=True)
    assert watch.live_phase(cancelling).phase is watch.Phase.CANCELLING


def test_a_cancelled_queued_run_has_a_receipt_with_its_refund(db, make_user):
    user = make_user()
    workflow_id = start(db, user)
    view = workflows.request_cancel(db, workflow_id, user)
    with db.read() as session:
        receipt = watch.receipt_for(session, view)
    assert receipt.status is WorkflowStatus.CANCELLED
    assert receipt.reason == "cancelled by the user"
    assert receipt.refunded == view.cost_credits == receipt.entry.amount
    assert receipt.provider_cancel is None and receipt.step is not None


def test_a_failed_run_names_its_step_and_the_providers_verdict(db, make_user):
    user = make_user()
    workflow_id = start(db, user)
    with db.begin() as session:
        workflows.claim(session, workflow_id, RUNNER, stale_before=utcnow())
        workflows.start_step(session, workflow_id, StepName.VALIDATE, RUNNER, deadline_at=utcnow())
        workflows.end_run(
            session,
            workflow_id,
            RUNNER,
            WorkflowStatus.CANCELLED,
            message="cancelled by the user; the provider did not confirm the cancellation",
            category=None,
        )
    with db.read() as session:
        view = workflows.load_workflow(session, workflow_id)
        receipt = watch.receipt_for(session, view)
    assert receipt.step is StepName.VALIDATE
    assert receipt.provider_cancel is False
    with db.read() as session:
        assert watch.receipt_for(session, replace(view, status=WorkflowStatus.COMPLETED)) is None
