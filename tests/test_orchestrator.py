"""The engine end to end on the offline providers, on SQLite and Postgres: happy path, retries,
permanent failures, cancel, deadlines, crash and resume, recovery, throttling, logs."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import logging

import av
import pytest
from sqlalchemy import event, func, select
from sqlalchemy.exc import OperationalError

from core import workflows
from core.auth import UserView
from core.clock import utcnow
from core.config import Settings
from core.errors import (
    FailureCategory,
    InvalidTransitionError,
    PermanentProviderError,
    RequestValidationError,
    TransientProviderError,
)
from core.executor import InlineExecutor, ThreadExecutor
from core.media import probe_image, probe_video
from core.models import ApiCall, Workflow, WorkflowStep
from core.pipeline import STEP_CALLS
from core.progress import VideoJobProgress
from core.providers import build_providers
from core.providers.base import Providers, VideoJobState, VideoJobStatus
from core.providers.offline import OfflineVideoGenerator
from core.runtime import Runtime
from core.schemas import parse_request
from core.states import STEP_ORDER, StepName, StepStatus, WorkflowStatus
from tests import stepping
from tests.fakes import Crash, Spy
from tests.helpers import balance, load, refunds, wait_for

SHORT = {
    "imagePrompt": "a red fox in fresh snow",
    "videoPrompt": "slow dolly in, snow falling",
    "imageConfig": {"size": "1024x1024"},
    "videoConfig": {"duration": "4s", "generateAudio": False},
}
STUCK = VideoJobStatus(VideoJobState.IN_PROGRESS, progress=0.5, logs=("Generating frames",))


def with_providers(settings: Settings, **replacements) -> Providers:
    return dataclasses.replace(build_providers(settings), **replacements)


@pytest.fixture
def user(make_user) -> UserView:
    return make_user(credits=100)


def engine(settings: Settings, providers: Providers | None = None, *, threaded=False) -> Runtime:
    executor = ThreadExecutor(2) if threaded else InlineExecutor()
    return Runtime(settings, upgrade=False, executor=executor, providers=providers)


# -- the happy path ---------------------------------------------------------------------------


def test_an_offline_run_yields_a_png_and_an_mp4_of_the_asked_length_and_size(settings, user):
    runtime = engine(settings)
    payload = {**SHORT, "imageConfig": {"size": "1792x1024"}, "videoConfig": {"duration": "8s"}}
    workflow_id, created = runtime.start_workflow(user, parse_request(payload))

    view = load(runtime, workflow_id)
    assert created and view.status is WorkflowStatus.COMPLETED
    assert [s.status for s in view.steps] == [StepStatus.COMPLETED] * 6
    with runtime.db.read() as session:
        assets = {a.kind: a for a in workflows.assets_of(session, workflow_id)}
    image = runtime.providers.storage.get(assets["image"].storage_key)
    video = runtime.providers.storage.get(assets["video"].storage_key)
    assert image.startswith(b"\x89PNG")
    assert (probe_image(image).width, probe_image(image).height) == (1792, 1024)
    probe = probe_video(video)
    assert abs(probe.duration_s - 8.0) <= 0.2
    assert (probe.width, probe.height) == (1280, 720)
    assert probe.has_audio
    with av.open(runtime.providers.storage.url(assets["video"].storage_key, expires_s=60)[7:]) as c:
        frames = sum(1 for _ in c.decode(video=0))
    assert frames == 8 * 24
    assert balance(runtime, user) == 100 - view.cost_credits
    runtime.shutdown()


def test_every_provider_call_is_recorded(settings, user):
    runtime = engine(settings)
    workflow_id, _ = runtime.start_workflow(user, parse_request(SHORT))
    with runtime.db.read() as session:
        calls = session.execute(
            select(ApiCall.step, ApiCall.operation, ApiCall.outcome).where(
                ApiCall.workflow_id == workflow_id
            )
        ).all()
    operations = {(step, op) for step, op, _ in calls}
    assert {
        ("validate", "moderate"),
        ("generate_image", "generate"),
        ("generate_video", "submit"),
        ("generate_video", "status"),
        ("generate_video", "result"),
        ("upload_video", "download"),
    } <= operations
    assert {outcome for _, _, outcome in calls} == {"ok"}


def test_each_step_makes_exactly_the_calls_the_pipeline_declares(settings, user):
    runtime = engine(settings)
    workflow_id, _ = runtime.start_workflow(user, parse_request(SHORT))
    with runtime.db.read() as session:
        calls = session.execute(
            select(ApiCall.step, ApiCall.provider, ApiCall.operation)
            .where(ApiCall.workflow_id == workflow_id)
            .order_by(ApiCall.id)
        ).all()
    providers = runtime.providers
    names = {
        "moderator": providers.moderator.name,
        "image": providers.image.name,
        "video": providers.video.name,
        "storage": providers.storage.name,
    }
    made: dict[str, list[tuple[str, str]]] = {step: [] for step in STEP_ORDER}
    for step, provider, operation in calls:
        if operation != "status" or made[step][-1:] != [(provider, "status")]:  # polls: once
            made[step].append((provider, operation))
    declared = {step: [(names[c], op) for c, op in STEP_CALLS[step]] for step in STEP_ORDER}
    assert made == declared


def test_logs_follow_the_original_systems_shape(settings, user, caplog):
    caplog.set_level(logging.INFO, logger="core")
    runtime = engine(settings)
    workflow_id, _ = runtime.start_workflow(user, parse_request(SHORT))
    assert f"Workflow {workflow_id} - Step validate: processing (0%)" in caplog.messages
    assert f"Workflow {workflow_id} - Step finalize: completed (100%)" in caplog.messages


# -- retries and failures ---------------------------------------------------------------------


def test_a_transient_fault_is_retried_and_the_run_completes(settings, user):
    image = Spy(build_providers(settings).image, generate=[TransientProviderError("503 busy")])
    runtime = engine(settings, with_providers(settings, image=image))
    workflow_id, _ = runtime.start_workflow(user, parse_request(SHORT))

    assert load(runtime, workflow_id).status is WorkflowStatus.COMPLETED
    assert image.calls["generate"] == 2
    with runtime.db.read() as session:
        attempts = session.execute(
            select(ApiCall.attempt, ApiCall.outcome)
            .where(ApiCall.workflow_id == workflow_id, ApiCall.operation == "generate")
            .order_by(ApiCall.attempt)
        ).all()
    assert [tuple(a) for a in attempts] == [(1, "transient"), (2, "ok")]


def test_a_permanent_fault_fails_at_once_with_its_message_and_refunds_once(settings, user):
    refusal = PermanentProviderError(
        "Your request was rejected by the safety system",
        category=FailureCategory.CONTENT_POLICY,
    )
    image = Spy(build_providers(settings).image, generate=[refusal])
    runtime = engine(settings, with_providers(settings, image=image))
    workflow_id, _ = runtime.start_workflow(user, parse_request(SHORT))

    view = load(runtime, workflow_id)
    assert view.status is WorkflowStatus.FAILED
    assert view.error_message == "Your request was rejected by the safety system"
    assert view.error_category == "content_policy"
    assert image.calls["generate"] == 1
    assert [s.status for s in view.steps] == [
        StepStatus.COMPLETED,
        StepStatus.FAILED,
        *[StepStatus.SKIPPED] * 4,
    ]
    assert refunds(runtime, workflow_id) == [view.cost_credits]
    assert balance(runtime, user) == 100


def test_a_provider_down_for_every_attempt_fails_as_unavailable(settings, user):
    outage = [TransientProviderError("502") for _ in range(settings.retry_max_attempts)]
    image = Spy(build_providers(settings).image, generate=outage)
    runtime = engine(settings, with_providers(settings, image=image))
    workflow_id, _ = runtime.start_workflow(user, parse_request(SHORT))

    view = load(runtime, workflow_id)
    assert (view.status, view.error_category) == (WorkflowStatus.FAILED, "provider_unavailable")
    assert image.calls["generate"] == settings.retry_max_attempts
    assert balance(runtime, user) == 100


def test_a_flagged_prompt_fails_validation_and_generates_nothing(settings, user):
    image = Spy(build_providers(settings).image)
    runtime = engine(settings, with_providers(settings, image=image))
    workflow_id, _ = runtime.start_workflow(
        user, parse_request({**SHORT, "imagePrompt": "a gore scene"})
    )

    view = load(runtime, workflow_id)
    assert (view.status, view.error_category) == (WorkflowStatus.FAILED, "moderation")
    assert "imagePrompt flagged for violence/graphic" in view.error_message
    assert view.step(StepName.VALIDATE).status is StepStatus.FAILED
    assert image.calls["generate"] == 0
    assert balance(runtime, user) == 100


def test_bad_requests_are_refused_with_the_field_named_and_nothing_written(settings, user):
    runtime = engine(settings)
    with pytest.raises(RequestValidationError) as caught:
        runtime.start_workflow(user, parse_request({**SHORT, "videoConfig": {"resolution": "4k"}}))
    assert list(caught.value.problems) == ["videoConfig.resolution"]
    with runtime.db.read() as session:
        assert session.scalar(select(func.count()).select_from(Workflow)) == 0
    assert balance(runtime, user) == 100


# -- cancel and deadlines ---------------------------------------------------------------------


# 0.5 s: the default, with which a check within that time of the step's last write takes the
# cancel flag that write returned instead of reading it again.
@pytest.mark.parametrize("progress_interval_s", [0, 0.5])
def test_cancel_during_generate_video_ends_cancelled_refunded_and_cancelled_at_the_provider(
    settings, user, progress_interval_s
):
    settings = settings.model_copy(update={"progress_min_interval_s": progress_interval_s})
    # A job that really is in flight at the provider: queued 1 s, then 3 s generating.
    slow = OfflineVideoGenerator(settings.offline_provider_dir, latency_s=1.0)
    video = Spy(slow)
    runtime = engine(settings, with_providers(settings, video=video), threaded=True)
    workflow_id, _ = runtime.start_workflow(user, parse_request(SHORT))
    wait_for(lambda: video.calls["status"] >= 2)

    # The poll's progress detail, read back through the one type that wrote it.
    def job() -> VideoJobProgress:
        step = load(runtime, workflow_id).step(StepName.GENERATE_VIDEO)
        return VideoJobProgress.from_output(step.output)

    wait_for(lambda: job().phase in (VideoJobState.QUEUED, VideoJobState.IN_PROGRESS))
    assert job().request_id is not None

    runtime.cancel(workflow_id, user)
    wait_for(lambda: load(runtime, workflow_id).status.is_terminal)

    view = load(runtime, workflow_id)
    assert view.status is WorkflowStatus.CANCELLED
    step = view.step(StepName.GENERATE_VIDEO)
    assert step.status is StepStatus.CANCELLED
    assert "the provider confirmed the cancellation" in step.error_message
    assert view.provider_cancel_confirmed is True
    assert video.calls["cancel"] == 1
    assert [s.status for s in view.steps[4:]] == [StepStatus.SKIPPED] * 2
    assert refunds(runtime, workflow_id) == [view.cost_credits]
    assert balance(runtime, user) == 100
    runtime.shutdown()


def test_a_run_cancelled_before_it_starts_is_refunded_at_once(settings, user, db):
    runtime = engine(settings)
    workflow_id = workflows.start_workflow(
        db, user_id=user.id, request=parse_request(SHORT), client_key="k", actor="t"
    ).workflow_id
    view = runtime.cancel(workflow_id, user)

    assert view.status is WorkflowStatus.CANCELLED
    assert {s.status for s in view.steps} == {StepStatus.CANCELLED}
    assert runtime.orchestrator.run_workflow(workflow_id) is None  # nothing left to claim
    assert balance(runtime, user) == 100


def test_a_step_past_its_deadline_is_cancelled_at_the_provider_and_refunded(settings, user):
    settings = settings.model_copy(update={"step_timeouts_s": {"generate_video": 0.3}})
    video = Spy(build_providers(settings).video, status=itertools.repeat(STUCK))
    runtime = engine(settings, with_providers(settings, video=video))
    workflow_id, _ = runtime.start_workflow(user, parse_request(SHORT))

    view = load(runtime, workflow_id)
    assert (view.status, view.error_category) == (WorkflowStatus.FAILED, "timeout")
    assert "generate_video ran past its" in view.error_message
    # Only the spy's status is stuck: the offline job itself finished, so the cancel is refused.
    assert view.provider_cancel_confirmed is False
    assert "the provider did not confirm the cancellation" in view.error_message
    assert video.calls["cancel"] == 1
    assert balance(runtime, user) == 100


# -- crash, resume, recovery ------------------------------------------------------------------


def crash_then_resume(settings, user, *, first: Providers, second: Providers) -> str:
    """Run until a provider 'kills the process', then let a fresh runtime's recovery resume."""
    crashed = engine(settings, first)
    with pytest.raises(Crash):
        crashed.start_workflow(user, parse_request(SHORT))
    crashed.db.dispose()
    fresh = engine(settings.model_copy(update={"heartbeat_stale_s": 0.05}), second)
    with fresh.db.read() as session:
        (workflow_id,) = session.execute(select(Workflow.id)).scalars()
        assert workflows.load_workflow(session, workflow_id).status is WorkflowStatus.RUNNING
    # The crashed runner's heartbeat goes stale after 50 ms; recovery then resumes the run.
    wait_for(lambda: fresh.orchestrator.recover().resubmitted == [workflow_id])
    return workflow_id


def test_a_run_killed_after_upload_image_resumes_without_a_second_image(settings, user):
    image = Spy(build_providers(settings).image)
    dying_video = Spy(build_providers(settings).video, submit=[Crash()])
    workflow_id = crash_then_resume(
        settings,
        user,
        first=with_providers(settings, image=image, video=dying_video),
        second=with_providers(settings, image=image),
    )
    fresh = engine(settings)
    view = load(fresh, workflow_id)
    assert view.status is WorkflowStatus.COMPLETED
    assert image.calls["generate"] == 1
    assert view.recoveries == 1
    assert refunds(fresh, workflow_id) == []


def test_a_still_staged_without_its_checksum_is_checked_when_stored(settings, user):
    """A run whose still an earlier version staged (it took no checksum then), resumed at
    upload_image: the still is read, checked and hashed there, then stored."""
    dying_storage = Spy(build_providers(settings).storage, copy=[Crash()])
    crashed = engine(settings, with_providers(settings, storage=dying_storage))
    with pytest.raises(Crash):
        crashed.start_workflow(user, parse_request(SHORT))
    crashed.db.dispose()
    fresh = engine(settings.model_copy(update={"heartbeat_stale_s": 0.05}))
    with fresh.db.begin() as session:
        step = session.execute(
            select(WorkflowStep).where(WorkflowStep.name == StepName.GENERATE_IMAGE.value)
        ).scalar_one()
        step.output = {
            k: v for k, v in step.output.items() if k not in ("sha256", "width", "height")
        }
    wait_for(lambda: fresh.orchestrator.recover().resubmitted != [])

    view = load(fresh, step.workflow_id)
    assert view.status is WorkflowStatus.COMPLETED
    stored = view.step(StepName.UPLOAD_IMAGE).output
    still = fresh.providers.storage.get(stored["storage_key"])
    assert stored["sha256"] == hashlib.sha256(still).hexdigest()
    probe = probe_image(still)
    assert (stored["width"], stored["height"]) == (probe.width, probe.height)


def test_a_resumed_video_step_reattaches_to_the_job_already_paid_for(settings, user):
    first_video = Spy(build_providers(settings).video, status=[Crash()])
    second_video = Spy(build_providers(settings).video)
    workflow_id = crash_then_resume(
        settings,
        user,
        first=with_providers(settings, video=first_video),
        second=with_providers(settings, video=second_video),
    )
    view = load(engine(settings), workflow_id)
    assert view.status is WorkflowStatus.COMPLETED
    assert first_video.calls["submit"] == 1
    assert second_video.calls["submit"] == 0
    assert view.step(StepName.GENERATE_VIDEO).output["request_id"] == (
        view.step(StepName.GENERATE_VIDEO).provider_request_id
    )


def test_a_run_restarted_too_often_fails_as_stale_and_is_refunded(settings, user):
    settings = settings.model_copy(update={"max_recoveries": 0})
    dying_video = Spy(build_providers(settings).video, submit=[Crash()])
    workflow_id = crash_then_resume(
        settings,
        user,
        first=with_providers(settings, video=dying_video),
        second=build_providers(settings),
    )
    runtime = engine(settings)
    view = load(runtime, workflow_id)
    assert (view.status, view.error_category) == (WorkflowStatus.FAILED, "stale")
    assert view.step(StepName.GENERATE_VIDEO).status is StepStatus.FAILED
    assert refunds(runtime, workflow_id) == [view.cost_credits]
    assert balance(runtime, user) == 100


def test_a_runner_that_lost_its_claim_can_no_longer_write(settings, user, db):
    workflow_id = workflows.start_workflow(
        db, user_id=user.id, request=parse_request(SHORT), client_key="k", actor="t"
    ).workflow_id
    with db.begin() as session:
        assert workflows.claim(session, workflow_id, "runner-a", stale_before=utcnow())
    with db.begin() as session:  # runner-a's heartbeat is older than "now": b takes over
        assert workflows.claim(session, workflow_id, "runner-b", stale_before=utcnow())
    with pytest.raises(InvalidTransitionError), db.begin() as session:
        stepping.start_step(
            session, workflow_id, StepName.VALIDATE, "runner-a", deadline_at=utcnow()
        )


def test_shutdown_releases_a_running_workflow_for_recovery(settings, user):
    video = Spy(build_providers(settings).video, status=itertools.repeat(STUCK))
    runtime = engine(settings, with_providers(settings, video=video), threaded=True)
    workflow_id, _ = runtime.start_workflow(user, parse_request(SHORT))
    wait_for(lambda: video.calls["status"] >= 1)

    runtime.orchestrator.shutdown()

    view = load(runtime, workflow_id)
    assert view.status is WorkflowStatus.RUNNING
    assert (view.runner_id, view.heartbeat_at) == (None, None)
    assert view.step(StepName.GENERATE_VIDEO).provider_request_id is not None
    with runtime.db.read() as session:
        assert workflows.stale_runs(session, stale_before=utcnow()) == [workflow_id]
    runtime.db.dispose()


# -- write economy ----------------------------------------------------------------------------


def count_step_updates(runtime: Runtime) -> list[str]:
    statements: list[str] = []

    @event.listens_for(runtime.db.engine, "before_cursor_execute")
    def remember(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith("UPDATE WORKFLOW_STEPS"):
            statements.append(statement)

    return statements


def test_progress_writes_are_throttled(settings, user):
    slow_polls = settings.model_copy(update={"progress_min_interval_s": 60})
    video = Spy(build_providers(settings).video, status=[STUCK] * 20)
    runtime = engine(slow_polls, with_providers(settings, video=video))
    updates = count_step_updates(runtime)
    workflow_id, _ = runtime.start_workflow(user, parse_request(SHORT))

    assert load(runtime, workflow_id).status is WorkflowStatus.COMPLETED
    assert video.calls["status"] >= 21
    # Per step: start, first progress report, completion; plus the write-ahead provider id.
    assert len(updates) <= 6 * 3 + 1


def test_a_stored_file_that_cannot_be_read_back_fails_verification_and_refunds(settings, user):
    storage = Spy(build_providers(settings).storage, head=[None])  # finalize's first read-back
    runtime = engine(settings, with_providers(settings, storage=storage))
    workflow_id, _ = runtime.start_workflow(user, parse_request(SHORT))

    view = load(runtime, workflow_id)
    assert (view.status, view.error_category) == (WorkflowStatus.FAILED, "verification")
    assert "missing or has the wrong size" in view.error_message
    assert view.step(StepName.FINALIZE).status is StepStatus.FAILED
    assert balance(runtime, user) == 100


class BitRot:
    """Local storage whose stored file `rotten` (not its staged copy) comes back with one byte
    changed: same size, other bytes."""

    def __init__(self, inner, rotten: str) -> None:
        self._inner, self.name, self.rotten = inner, inner.name, rotten

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    def get(self, key: str) -> bytes:
        data = self._inner.get(key)
        stored = key.endswith(f"/{self.rotten}") and "/staging/" not in key
        return bytes([data[0] ^ 1]) + data[1:] if stored else data


@pytest.mark.parametrize("rotten", ["image.png", "video.mp4"])
def test_a_stored_file_read_back_changed_fails_verification_and_refunds(settings, user, rotten):
    storage = BitRot(build_providers(settings).storage, rotten)
    runtime = engine(settings, with_providers(settings, storage=storage))
    workflow_id, _ = runtime.start_workflow(user, parse_request(SHORT))

    view = load(runtime, workflow_id)
    assert (view.status, view.error_category) == (WorkflowStatus.FAILED, "verification")
    assert f"{rotten} does not match its checksum" in view.error_message
    assert view.step(StepName.FINALIZE).status is StepStatus.FAILED
    assert balance(runtime, user) == 100


def test_a_running_workflow_beats_its_heartbeat(settings, user):
    beating = settings.model_copy(update={"heartbeat_interval_s": 0.05})
    video = Spy(build_providers(settings).video, status=itertools.repeat(STUCK))
    runtime = engine(beating, with_providers(settings, video=video), threaded=True)
    runtime.start_background()
    workflow_id, _ = runtime.start_workflow(user, parse_request(SHORT))
    wait_for(lambda: video.calls["status"] >= 1)
    first = load(runtime, workflow_id).heartbeat_at

    wait_for(lambda: load(runtime, workflow_id).heartbeat_at > first)
    runtime.cancel(workflow_id, user)
    wait_for(lambda: load(runtime, workflow_id).status.is_terminal)
    runtime.shutdown()


def test_a_database_error_mid_step_leaves_the_run_to_recovery_not_failed(settings, user):
    outage = OperationalError("UPDATE workflow_steps ...", {}, Exception("server closed"))
    image = Spy(build_providers(settings).image, generate=[outage])
    first = engine(settings, with_providers(settings, image=image))
    first.start_workflow(user, parse_request(SHORT))
    with first.db.read() as session:
        (workflow_id,) = session.execute(select(Workflow.id)).scalars()
    view = load(first, workflow_id)
    assert view.status is WorkflowStatus.RUNNING
    assert refunds(first, workflow_id) == []

    fresh = engine(settings.model_copy(update={"heartbeat_stale_s": 0.05}))
    wait_for(lambda: fresh.orchestrator.recover().resubmitted == [workflow_id])
    assert load(fresh, workflow_id).status is WorkflowStatus.COMPLETED
