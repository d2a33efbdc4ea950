"""The whole engine through the three real clients (openai, fal-client, boto3) against the API
twins over real HTTP(S), on SQLite and Postgres: the issue's list of runs that must work, and
the `python -m core` commands driven by nothing but environment variables.

Nothing here replaces an SDK: the runtime builds its providers from Settings exactly as in
production (core.providers.build_providers); only the hosts differ.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from core import health, workflows
from core.auth import UserView
from core.config import Settings
from core.executor import InlineExecutor, ThreadExecutor
from core.media import probe_image, probe_video
from core.models import ApiCall
from core.providers.fal_video import FalVideoGenerator, parse_job_id
from core.providers.openai_images import OpenAIImageGenerator, OpenAIModerator
from core.providers.s3_storage import S3Storage
from core.runtime import Runtime
from core.schemas import parse_request
from core.states import StepName, StepStatus, WorkflowStatus
from core.ui import media
from tests.helpers import balance, load, refunds, wait_for
from tests.twins.fal_twin import CONTENT_POLICY_MESSAGE, FalTwin
from tests.twins.openai_twin import CONTENT_POLICY_DALLE, CONTENT_POLICY_GPT, OpenAITwin
from tests.twins.s3_twin import S3Twin

REPO = Path(__file__).resolve().parents[2]
VEO_QUEUE = "/fal-ai/veo3.1/requests"
RUN = {
    "imagePrompt": "a lighthouse on a cliff at dusk",
    "videoPrompt": "slow push-in, waves breaking below",
    "imageConfig": {"size": "1792x1024"},
    "videoConfig": {"duration": "4s", "resolution": "720p", "generateAudio": False},
}


@dataclass
class Twins:
    openai: OpenAITwin
    fal: FalTwin
    s3: S3Twin


@pytest.fixture
def twins(openai_twin: OpenAITwin, fal_twin: FalTwin, s3_twin: S3Twin) -> Twins:
    return Twins(openai_twin, fal_twin, s3_twin)


@pytest.fixture
def make_settings(tmp_path: Path, database_url: str, twins: Twins) -> Callable[..., Settings]:
    """Settings naming every real provider by its twin: no env, no .env file."""

    def make(**overrides) -> Settings:
        values = {
            "data_dir": tmp_path / "data",
            "database_url": database_url,
            "openai_api_key": twins.openai.api_key,
            "openai_base_url": twins.openai.base_url,
            "fal_key": twins.fal.key,
            "fal_queue_run_host": twins.fal.host,
            "s3_bucket_name": twins.s3.bucket,
            "s3_endpoint_url": twins.s3.endpoint_url,
            "s3_region": twins.s3.region,
            "offline_latency_s": 0,
            "retry_initial_wait_s": 0,
            "retry_max_wait_s": 0,
            "poll_interval_s": 0.01,
            "progress_min_interval_s": 0,
            **overrides,
        }
        return Settings(_env_file=None, **values)

    return make


@pytest.fixture
def user(make_user) -> UserView:
    return make_user(credits=100)


@pytest.fixture
def engines() -> Iterator[Callable[..., Runtime]]:
    """Builds runtimes and shuts every one down after the test, passed or failed."""
    built: list[Runtime] = []

    def build(settings: Settings, *, threaded: bool = False) -> Runtime:
        executor = ThreadExecutor(2) if threaded else InlineExecutor()
        runtime = Runtime(settings, upgrade=False, executor=executor)
        built.append(runtime)
        return runtime

    yield build
    for runtime in built:
        runtime.shutdown()


def calls(runtime: Runtime, workflow_id: str) -> list[ApiCall]:
    with runtime.db.read() as session:
        rows = session.execute(
            select(ApiCall).where(ApiCall.workflow_id == workflow_id).order_by(ApiCall.id)
        )
        return list(rows.scalars())


def attempts(runtime: Runtime, workflow_id: str, step: str, operation: str) -> list[tuple]:
    return [
        (c.attempt, c.outcome, c.status_code)
        for c in calls(runtime, workflow_id)
        if (c.step, c.operation) == (step, operation)
    ]


def assert_failed_and_refunded_once(runtime: Runtime, user: UserView, workflow_id: str) -> None:
    view = load(runtime, workflow_id)
    assert refunds(runtime, workflow_id) == [view.cost_credits]
    assert balance(runtime, user) == 100


def fal_job_of(runtime: Runtime, workflow_id: str) -> str:
    job = load(runtime, workflow_id).step(StepName.GENERATE_VIDEO).provider_request_id
    assert job is not None
    return parse_job_id(job)[1]


# -- the happy path ----------------------------------------------------------------------------


def test_a_run_through_all_three_real_clients_completes_with_a_real_clip(
    make_settings, engines, user, twins
):
    runtime = engines(make_settings())
    assert isinstance(runtime.providers.image, OpenAIImageGenerator)
    assert isinstance(runtime.providers.moderator, OpenAIModerator)
    assert isinstance(runtime.providers.video, FalVideoGenerator)
    assert isinstance(runtime.providers.storage, S3Storage)

    workflow_id, _ = runtime.start_workflow(user, parse_request(RUN))

    view = load(runtime, workflow_id)
    assert view.status is WorkflowStatus.COMPLETED, view.error_message
    assert [s.status for s in view.steps] == [StepStatus.COMPLETED] * 6
    # OpenAI: one moderation of both prompts, one image at the asked size.
    (moderation,) = twins.openai.recorded("POST", "/v1/moderations")
    assert moderation.json["input"] == [RUN["imagePrompt"], RUN["videoPrompt"]]
    (image_call,) = twins.openai.recorded("POST", "/v1/images/generations")
    assert (image_call.json["model"], image_call.json["size"]) == ("gpt-image-2", "1792x1024")
    # fal: one submit whose still is a presigned S3 GET that really serves the stored image.
    (submit,) = twins.fal.recorded("POST")
    assert submit.path == "/fal-ai/veo3.1/image-to-video"
    image_url = submit.json["image_url"]
    assert image_url.startswith(f"{twins.s3.endpoint_url}/{twins.s3.bucket}/users/")
    assert "X-Amz-Signature=" in image_url
    still = httpx.get(image_url)
    assert still.status_code == 200 and still.content.startswith(b"\x89PNG")
    assert (probe_image(still.content).width, probe_image(still.content).height) == (1792, 1024)
    assert submit.json["duration"] == "4s" and submit.json["generate_audio"] is False
    request_id = fal_job_of(runtime, workflow_id)
    assert len(twins.fal.recorded("GET", f"{VEO_QUEUE}/{request_id}/status")) >= 3
    assert twins.fal.recorded("GET", f"/files/{request_id}.mp4")
    assert twins.fal.uploads == {}  # S3 storage: the still went by URL, not by upload
    # S3: both finished files stored, the staged still gone, the clip decodes as asked.
    with runtime.db.read() as session:
        assets = {a.kind: a for a in workflows.assets_of(session, workflow_id)}
    stored = {
        obj["Key"]
        for obj in twins.s3.client().list_objects_v2(Bucket=twins.s3.bucket).get("Contents", [])
    }
    assert stored == {assets["image"].storage_key, assets["video"].storage_key}
    clip = runtime.providers.storage.get(assets["video"].storage_key)
    probe = probe_video(clip)
    assert (probe.width, probe.height, probe.has_audio) == (1280, 720, False)
    assert probe.duration_s == pytest.approx(4, abs=0.25)
    # Every attempt recorded, under the real providers' names, with list prices where billed.
    rows = calls(runtime, workflow_id)
    assert {c.provider for c in rows} == {"openai", "fal", "s3"}
    assert {c.outcome for c in rows} == {"ok"}
    cost = {(c.step, c.operation): c.cost_usd for c in rows}
    assert cost[("generate_image", "generate")] > Decimal(0)
    assert cost[("generate_video", "result")] > Decimal(0)
    assert refunds(runtime, workflow_id) == []
    assert balance(runtime, user) == 100 - view.cost_credits


def test_a_reused_still_never_reaches_openai_and_costs_nothing(make_settings, engines, user, twins):
    """Two runs of one image request with two camera moves: OpenAI makes one image, the
    second run copies it from S3 (a free cache/reuse call) and gets its credits back."""
    runtime = engines(make_settings())
    first, _ = runtime.start_workflow(user, parse_request(RUN), reuse_still=True)
    orbit = {**RUN, "videoPrompt": "slow orbit around the lighthouse"}
    second, _ = runtime.start_workflow(user, parse_request(orbit), reuse_still=True)

    views = [load(runtime, first), load(runtime, second)]
    assert [v.status for v in views] == [WorkflowStatus.COMPLETED] * 2
    assert views[1].reuse_image_from == first
    assert len(twins.openai.recorded("POST", "/v1/images/generations")) == 1
    assert len(twins.fal.recorded("POST", "/fal-ai/veo3.1/image-to-video")) == 2
    reuse = [(c.provider, c.operation, c.cost_usd) for c in calls(runtime, second)]
    assert ("cache", "reuse", Decimal(0)) in reuse
    assert not [c for c in reuse if c[0] == "openai" and c[1] == "generate"]
    assert views[0].cost_credits - views[1].cost_credits == 3  # the wide standard still
    assert balance(runtime, user) == 100 - views[0].cost_credits - views[1].cost_credits


def test_presign_expiry_s_reaches_the_links_the_pipeline_and_the_pages_hand_out(
    make_settings, engines, user, twins
):
    runtime = engines(make_settings(presign_expiry_s=123))
    workflow_id, _ = runtime.start_workflow(user, parse_request(RUN))
    assert load(runtime, workflow_id).status is WorkflowStatus.COMPLETED

    (submit,) = twins.fal.recorded("POST")
    assert "X-Amz-Expires=123&" in submit.json["image_url"]  # the still handed to fal
    with runtime.db.read() as session:
        assets = workflows.assets_of(session, workflow_id)
    links = [media.source_of(runtime, asset) for asset in assets]  # what the pages show
    assert len(links) == 2 and all("X-Amz-Expires=123&" in link for link in links)


def test_models_chosen_for_a_run_reach_the_providers_with_their_own_arguments(
    make_settings, engines, user, twins
):
    runtime = engines(make_settings())
    chosen = {
        **RUN,
        "imageModel": "gpt-image-1.5",
        "videoModel": "fal-ai/kling-video/v2.5-turbo/pro/image-to-video",
    }
    workflow_id, _ = runtime.start_workflow(user, parse_request(chosen))

    view = load(runtime, workflow_id)
    assert view.status is WorkflowStatus.COMPLETED, view.error_message
    (image_call,) = twins.openai.recorded("POST", "/v1/images/generations")
    # gpt-image-1.5 has no 1792x1024: the nearest landscape size it takes.
    assert (image_call.json["model"], image_call.json["size"]) == ("gpt-image-1.5", "1536x1024")
    (submit,) = twins.fal.recorded("POST")
    assert submit.path == "/fal-ai/kling-video/v2.5-turbo/pro/image-to-video"
    assert submit.json["duration"] == "5"  # Kling's nearest duration to the 4 s asked for
    with runtime.db.read() as session:
        video = next(a for a in workflows.assets_of(session, workflow_id) if a.kind == "video")
    assert video.duration_s == pytest.approx(5, abs=0.25)


def test_with_local_folder_storage_the_still_reaches_real_fal_by_its_cdn_upload(
    make_settings, engines, user, twins
):
    # No bucket: storage falls back to the local folder. (STORAGE_BACKEND=local would be the
    # explicit way, but build_providers currently demands S3_BUCKET_NAME for it.)
    runtime = engines(make_settings(s3_bucket_name=None))
    assert runtime.providers.storage.name != "s3"

    workflow_id, _ = runtime.start_workflow(user, parse_request(RUN))

    assert load(runtime, workflow_id).status is WorkflowStatus.COMPLETED
    (path, upload) = next(iter(twins.fal.uploads.items()))
    (submit,) = twins.fal.recorded("POST", "/fal-ai/")
    assert submit.json["image_url"] == twins.fal.access_url(path)
    with runtime.db.read() as session:
        assets = {a.kind: a for a in workflows.assets_of(session, workflow_id)}
    assert upload.data == runtime.providers.storage.get(assets["image"].storage_key)
    assert twins.s3.requests == []


# -- retries -----------------------------------------------------------------------------------


def test_a_429_with_retry_after_is_waited_out_then_the_run_completes(
    make_settings, engines, user, twins
):
    twins.openai.fail_next("images", 429, retry_after=1)
    runtime = engines(make_settings(retry_max_wait_s=5))

    workflow_id, _ = runtime.start_workflow(user, parse_request(RUN))

    assert load(runtime, workflow_id).status is WorkflowStatus.COMPLETED
    rows = [
        c
        for c in calls(runtime, workflow_id)
        if (c.step, c.operation) == ("generate_image", "generate")
    ]
    assert [(c.attempt, c.outcome, c.status_code, c.error_code) for c in rows] == [
        (1, "transient", 429, "rate_limit_exceeded"),
        (2, "ok", None, None),
    ]
    # The wait was the provider's 1 s, not the zero backoff these settings would give.
    gap = (rows[1].started_at - rows[0].started_at).total_seconds()
    assert gap >= 1.0
    assert len(twins.openai.recorded("POST", "/v1/images/generations")) == 2


def _break_openai_images(twins: Twins) -> tuple[str, str]:
    twins.openai.fail_next("images", 500, times=2)
    return "generate_image", "generate"


def _break_fal_submit(twins: Twins) -> tuple[str, str]:
    twins.fal.fail_next("submit", 500, error_type="internal_server_error", times=2)
    return "generate_video", "submit"


def _break_s3_put(twins: Twins) -> tuple[str, str]:
    twins.s3.fail_next(500, "InternalError", "We encountered an internal error.", times=2)
    return "generate_image", "put"  # the run's first S3 call: staging the still


@pytest.mark.parametrize(
    "break_twice",
    [_break_openai_images, _break_fal_submit, _break_s3_put],
    ids=["openai", "fal", "s3"],
)
def test_two_500s_then_success_retries_and_completes(
    make_settings, engines, user, twins, break_twice
):
    step, operation = break_twice(twins)
    runtime = engines(make_settings())

    workflow_id, _ = runtime.start_workflow(user, parse_request(RUN))

    assert load(runtime, workflow_id).status is WorkflowStatus.COMPLETED
    assert attempts(runtime, workflow_id, step, operation) == [
        (1, "transient", 500),
        (2, "transient", 500),
        (3, "ok", None),
    ]
    assert len(twins.fal.jobs) == 1  # a refused submit left no job behind to bill
    assert refunds(runtime, workflow_id) == []


# -- permanent failures ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "message"),
    [("gpt-image", CONTENT_POLICY_GPT), ("dall-e", CONTENT_POLICY_DALLE)],
    ids=["gpt-image", "dall-e"],
)
def test_an_image_content_policy_refusal_fails_at_once_with_openais_words_and_refunds_once(
    make_settings, engines, user, twins, family, message
):
    twins.openai.reject_next_for_content_policy(family)
    runtime = engines(make_settings())

    workflow_id, _ = runtime.start_workflow(user, parse_request(RUN))

    view = load(runtime, workflow_id)
    assert (view.status, view.error_category) == (WorkflowStatus.FAILED, "content_policy")
    assert view.error_message == message
    assert len(twins.openai.recorded("POST", "/v1/images/generations")) == 1
    assert attempts(runtime, workflow_id, "generate_image", "generate") == [(1, "permanent", 400)]
    assert view.step(StepName.GENERATE_IMAGE).status is StepStatus.FAILED
    assert twins.fal.requests == []
    assert_failed_and_refunded_once(runtime, user, workflow_id)


def test_a_video_job_failed_by_fals_content_checker_fails_as_content_policy_and_refunds(
    make_settings, engines, user, twins
):
    twins.openai.flagged_terms = {}  # let the prompt past moderation so fal's filter sees it
    runtime = engines(make_settings())

    workflow_id, _ = runtime.start_workflow(
        user, parse_request({**RUN, "videoPrompt": "a gore scene"})
    )

    view = load(runtime, workflow_id)
    assert (view.status, view.error_category) == (WorkflowStatus.FAILED, "content_policy")
    assert CONTENT_POLICY_MESSAGE in view.error_message
    assert attempts(runtime, workflow_id, "generate_video", "submit") == [(1, "ok", None)]
    assert_failed_and_refunded_once(runtime, user, workflow_id)


def test_a_flagged_prompt_fails_validation_and_no_image_is_ever_asked_for(
    make_settings, engines, user, twins
):
    runtime = engines(make_settings())

    workflow_id, _ = runtime.start_workflow(
        user, parse_request({**RUN, "imagePrompt": "a gore scene"})
    )

    view = load(runtime, workflow_id)
    assert (view.status, view.error_category) == (WorkflowStatus.FAILED, "moderation")
    assert "imagePrompt flagged for violence/graphic" in view.error_message
    assert view.step(StepName.VALIDATE).status is StepStatus.FAILED
    assert len(twins.openai.recorded("POST", "/v1/moderations")) == 1
    assert twins.openai.recorded("POST", "/v1/images/generations") == []
    assert twins.fal.requests == [] and twins.s3.recorded("PUT") == []
    assert_failed_and_refunded_once(runtime, user, workflow_id)


def test_a_wrong_openai_key_fails_the_run_naming_openai_api_key_and_health_shows_it_down(
    make_settings, engines, user, twins
):
    settings = make_settings(openai_api_key="sk-wrong-key-0000")
    runtime = engines(settings)

    workflow_id, _ = runtime.start_workflow(user, parse_request(RUN))

    view = load(runtime, workflow_id)
    assert (view.status, view.error_category) == (WorkflowStatus.FAILED, "provider_auth")
    assert "check OPENAI_API_KEY" in view.error_message
    assert attempts(runtime, workflow_id, "validate", "moderate") == [(1, "permanent", 401)]
    assert twins.openai.recorded("POST", "/v1/images/generations") == []
    assert_failed_and_refunded_once(runtime, user, workflow_id)

    checks = {check.name: check for check in health.check_settings(settings)}

    for down in ("image provider", "moderation provider"):
        assert not checks[down].ok
        assert "check OPENAI_API_KEY" in checks[down].detail
    for up in ("database", "storage probe", "video provider", "storage credentials"):
        assert checks[up].ok, checks[up].detail
    assert twins.openai.recorded("GET", "/v1/models/gpt-image-2")


# -- deadlines and cancel: the fal job is cancelled at fal ------------------------------------


def test_a_fal_job_stuck_past_the_step_budget_fails_as_timeout_cancelled_at_fal_and_refunded(
    make_settings, engines, user, twins
):
    twins.fal.script_next_job(queue_polls=0, outcome="stuck")
    settings = make_settings(step_timeouts_s={"generate_video": 0.5}, poll_interval_s=0.05)
    runtime = engines(settings)

    workflow_id, _ = runtime.start_workflow(user, parse_request(RUN))

    view = load(runtime, workflow_id)
    assert (view.status, view.error_category) == (WorkflowStatus.FAILED, "timeout")
    assert "ran past its" in view.error_message
    assert "the provider confirmed the cancellation" in view.error_message
    request_id = fal_job_of(runtime, workflow_id)
    (put,) = twins.fal.recorded("PUT")
    assert put.path == f"{VEO_QUEUE}/{request_id}/cancel"
    assert twins.fal.cancelled == [request_id]
    result_url = f"{VEO_QUEUE}/{request_id}"
    assert [r for r in twins.fal.recorded("GET") if r.path == result_url] == []  # never fetched
    assert_failed_and_refunded_once(runtime, user, workflow_id)


def test_cancelling_while_the_fal_job_is_queued_cancels_it_at_fal_and_refunds(
    make_settings, engines, user, twins
):
    twins.fal.script_next_job(queue_polls=100_000)  # stays in fal's queue until cancelled
    runtime = engines(make_settings(), threaded=True)
    workflow_id, _ = runtime.start_workflow(user, parse_request(RUN))
    wait_for(lambda: len(twins.fal.recorded("GET", VEO_QUEUE)) >= 2)  # seen queued, twice

    runtime.cancel(workflow_id, user)
    wait_for(lambda: load(runtime, workflow_id).status.is_terminal)

    view = load(runtime, workflow_id)
    assert view.status is WorkflowStatus.CANCELLED
    step = view.step(StepName.GENERATE_VIDEO)
    assert step.status is StepStatus.CANCELLED
    assert "the provider confirmed the cancellation" in step.error_message
    request_id = fal_job_of(runtime, workflow_id)
    assert twins.fal.jobs[request_id].polls >= 2 and twins.fal.cancelled == [request_id]
    assert [p.path for p in twins.fal.recorded("PUT")] == [f"{VEO_QUEUE}/{request_id}/cancel"]
    assert [s.status for s in view.steps[4:]] == [StepStatus.SKIPPED] * 2
    assert_failed_and_refunded_once(runtime, user, workflow_id)


# -- the commands, driven by environment variables alone ---------------------------------------


def _exports(text: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").partition("=")
            values[name] = shlex.split(value)[0]
    return values


@pytest.fixture
def twins_command(tmp_path: Path) -> Iterator[dict[str, str]]:
    """`python -m tests.twins` in its own process; yields the variables it exported."""
    env_file = tmp_path / "twins.env"
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.twins", "--env-file", str(env_file)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: env_file.exists() or process.poll() is not None, timeout_s=30)
        assert process.poll() is None, process.communicate()[1]
        yield _exports(env_file.read_text())
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_the_twins_command_serves_a_cli_run_and_a_green_health_check_from_env_alone(
    twins_command, tmp_path
):
    assert set(twins_command) == {
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "FAL_KEY",
        "FAL_QUEUE_RUN_HOST",
        "SSL_CERT_FILE",
        "S3_BUCKET_NAME",
        "S3_ENDPOINT_URL",
        "S3_REGION",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    }
    # Only what a user would export. POLL_INTERVAL_S is the one speed-up: the twin finishes a
    # job after a few polls, and the default 3 s between polls would cost this test ~10 s.
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        **twins_command,
        "DATA_DIR": str(tmp_path / "data"),
        "OFFLINE_LATENCY_S": "0",
        "POLL_INTERVAL_S": "0.05",
    }

    def core(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "core", *args],
            env=env,
            cwd=tmp_path,  # away from the repository: no .env file can leak in
            capture_output=True,
            text=True,
            timeout=120,
        )

    run = core("run", "--image-prompt", "a lighthouse at dusk", "--video-prompt", "slow push-in")

    assert run.returncode == 0, run.stdout + run.stderr
    printed = dict(
        line.split(": ", 1)
        for line in run.stdout.splitlines()
        if line.startswith(("image: ", "video: "))
    )
    video = httpx.get(printed["video"])  # a presigned URL on the S3 twin
    assert video.status_code == 200
    probe = probe_video(video.content)
    assert (probe.width, probe.height, probe.has_audio) == (1280, 720, True)  # CLI defaults
    assert probe.duration_s == pytest.approx(8, abs=0.25)

    checked = core("health")

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "gpt-image-2 reachable" in checked.stdout and "key accepted" in checked.stdout
