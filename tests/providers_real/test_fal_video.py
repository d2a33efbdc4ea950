"""FalVideoGenerator, through the real fal-client SDK, against the fal twin over TLS. The SDK
reaches the twin only through FAL_QUEUE_RUN_HOST and SSL_CERT_FILE (see tests/twins/fixtures.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import fal_client.client
import httpx
import pytest

from core.errors import FailureCategory, PermanentProviderError, TransientProviderError
from core.media import probe_video
from core.providers.base import VideoJobState, VideoSpec
from core.providers.catalog import VIDEO_MODELS, video_arguments
from core.providers.fal_video import CHECK_REQUEST_ID, FalVideoGenerator, parse_job_id
from tests.twins.base import Fault
from tests.twins.fal_twin import CONTENT_POLICY_MESSAGE, FalTwin
from tests.twins.openai_twin import make_png

REPO = Path(__file__).resolve().parents[2]
VEO = "fal-ai/veo3.1/image-to-video"
SPEC = VideoSpec(
    prompt="slow push-in on a lighthouse at dusk",
    image_url="https://bucket.example/stills/lighthouse.png",
    duration_s=4,
    resolution="720p",
    aspect_ratio="16:9",
    generate_audio=False,
)


def adapter(twin: FalTwin, **kwargs) -> FalVideoGenerator:
    return FalVideoGenerator(twin.key, **kwargs)


def submits(twin: FalTwin) -> list:
    return twin.recorded("POST")


def poll_until_done(gen: FalVideoGenerator, job: str, limit: int = 20):
    seen = []
    for _ in range(limit):
        status = gen.status(job)
        seen.append(status)
        if status.state in (VideoJobState.COMPLETED, VideoJobState.FAILED):
            return seen
    raise AssertionError(f"job never finished: {seen[-1]}")


def test_the_sdk_is_bound_to_the_twin_and_makes_one_attempt_per_call(fal_twin):
    adapter(fal_twin).submit(SPEC)
    assert fal_client.client.QUEUE_URL_FORMAT == f"https://{fal_twin.host}/"
    assert fal_client.client.MAX_ATTEMPTS == 1


def test_binding_the_sdk_left_no_fal_env_behind(fal_tls):
    # Only fal_tls here, not fal_twin: outside the fal tests nothing points at the twin.
    assert os.environ.get("FAL_QUEUE_RUN_HOST") != fal_tls.host
    assert os.environ.get("SSL_CERT_FILE") != str(fal_tls.ca_bundle)


def test_submit_sends_the_catalog_mapping_and_returns_a_reattachable_id(fal_twin):
    spec = replace(SPEC, resolution="1080p", aspect_ratio="9:16", negative_prompt="blur", seed=3)

    job = adapter(fal_twin).submit(spec)

    endpoint, request_id = parse_job_id(job)
    assert endpoint == VEO and request_id in fal_twin.jobs
    assert job == f"{VEO}::{request_id}"
    (request,) = submits(fal_twin)
    assert request.path == f"/{VEO}"
    assert request.headers["authorization"] == f"Key {fal_twin.key}"
    assert request.json == {
        "prompt": spec.prompt,
        "image_url": spec.image_url,
        "duration": "4s",
        "resolution": "1080p",
        "aspect_ratio": "9:16",
        "generate_audio": False,
        "negative_prompt": "blur",
        "seed": 3,
    }


@pytest.mark.parametrize("endpoint", list(VIDEO_MODELS))
@pytest.mark.parametrize("duration_s", [4, 8, 10])
def test_every_catalog_model_accepts_our_mapping(fal_twin, endpoint, duration_s):
    spec = replace(SPEC, model=endpoint, duration_s=duration_s, generate_audio=True)
    job = adapter(fal_twin).submit(spec)
    assert job.startswith(f"{endpoint}::")
    assert submits(fal_twin)[0].json == video_arguments(spec)


def test_status_walks_queue_then_progress_with_logs_then_completed(fal_twin):
    fal_twin.script_next_job(queue_polls=2, progress_polls=2)
    gen = adapter(fal_twin)
    job = gen.submit(SPEC)

    seen = poll_until_done(gen, job)

    assert [(s.state, s.queue_position) for s in seen] == [
        (VideoJobState.QUEUED, 1),
        (VideoJobState.QUEUED, 0),
        (VideoJobState.IN_PROGRESS, None),
        (VideoJobState.IN_PROGRESS, None),
        (VideoJobState.COMPLETED, None),
    ]
    assert seen[3].logs == ("Generating video: step 1", "Generating video: step 2")
    _, request_id = parse_job_id(job)
    polls = fal_twin.recorded("GET", f"/fal-ai/veo3.1/requests/{request_id}/status")
    assert len(polls) == 5 and all(p.query == {"logs": "true"} for p in polls)


def test_the_result_is_a_real_clip_fetchable_over_https_with_only_ssl_cert_file(fal_twin, fal_tls):
    fal_twin.script_next_job(queue_polls=0, progress_polls=0)
    gen = adapter(fal_twin)
    job = gen.submit(SPEC)
    assert gen.status(job).state is VideoJobState.COMPLETED

    video = gen.result(job)

    assert video.url.startswith(f"https://{fal_twin.host}/files/")
    assert video.content_type == "video/mp4"
    assert os.environ["SSL_CERT_FILE"] == str(fal_tls.ca_bundle)
    response = httpx.get(video.url)  # default trust_env: SSL_CERT_FILE is the only trust setup
    assert response.status_code == 200
    probe = probe_video(response.content)
    assert (probe.width, probe.height, probe.has_audio) == (1280, 720, False)
    assert probe.duration_s == pytest.approx(4, abs=0.2)


def test_a_new_adapter_instance_reattaches_by_id_after_a_restart(fal_twin):
    fal_twin.script_next_job(queue_polls=1, progress_polls=1)
    job = adapter(fal_twin).submit(SPEC)

    restarted = adapter(fal_twin)
    seen = poll_until_done(restarted, job)

    assert seen[-1].state is VideoJobState.COMPLETED
    assert restarted.result(job).url.endswith(".mp4")


def test_cancel_stops_a_running_job_and_it_then_reads_as_failed(fal_twin):
    fal_twin.script_next_job(queue_polls=0, outcome="stuck")
    gen = adapter(fal_twin)
    job = gen.submit(SPEC)
    assert gen.status(job).state is VideoJobState.IN_PROGRESS

    assert adapter(fal_twin).cancel(job) is True

    _, request_id = parse_job_id(job)
    assert fal_twin.cancelled == [request_id]
    (put,) = fal_twin.recorded("PUT")
    assert put.path == f"/fal-ai/veo3.1/requests/{request_id}/cancel"
    status = gen.status(job)
    assert status.state is VideoJobState.FAILED and "cancelled" in (status.error or "")


def test_cancelling_a_finished_job_reports_false(fal_twin):
    fal_twin.script_next_job(queue_polls=0, progress_polls=0)
    gen = adapter(fal_twin)
    job = gen.submit(SPEC)
    gen.status(job)
    assert gen.cancel(job) is False


def test_a_stuck_job_stays_in_progress_and_has_no_result_yet(fal_twin):
    fal_twin.script_next_job(queue_polls=0, outcome="stuck")
    gen = adapter(fal_twin)
    job = gen.submit(SPEC)

    states = {gen.status(job).state for _ in range(8)}

    assert states == {VideoJobState.IN_PROGRESS}
    with pytest.raises(TransientProviderError, match="not finished"):
        gen.result(job)


def test_a_content_policy_422_at_submit_is_permanent_with_fals_message(fal_twin):
    fal_twin.reject_next_submit_for_content_policy()
    with pytest.raises(PermanentProviderError) as caught:
        adapter(fal_twin).submit(SPEC)
    assert caught.value.category is FailureCategory.CONTENT_POLICY
    assert caught.value.message == CONTENT_POLICY_MESSAGE
    assert caught.value.status_code == 422


def test_a_job_failed_by_the_content_checker_reads_failed_and_its_result_is_content_policy(
    fal_twin,
):
    fal_twin.script_next_job(queue_polls=0, progress_polls=1)
    gen = adapter(fal_twin)
    job = gen.submit(replace(SPEC, prompt="a gore scene"))

    final = poll_until_done(gen, job)[-1]

    assert final.state is VideoJobState.FAILED
    assert final.error == f"content_policy_violation: {CONTENT_POLICY_MESSAGE}"
    assert final.error_category is FailureCategory.CONTENT_POLICY
    with pytest.raises(PermanentProviderError) as caught:
        gen.result(job)
    assert caught.value.category is FailureCategory.CONTENT_POLICY


def test_a_validation_422_is_permanent_and_names_the_field(fal_twin):
    detail = [
        {"loc": ["body", "duration"], "msg": "Input should be '4s', '6s' or '8s'", "type": "x"}
    ]
    fal_twin.fail_next("submit", 422, detail=detail)
    with pytest.raises(PermanentProviderError, match="duration: Input should be") as caught:
        adapter(fal_twin).submit(SPEC)
    assert caught.value.category is FailureCategory.PROVIDER_REJECTED


def test_a_server_error_is_transient(fal_twin):
    gen = adapter(fal_twin)
    job = gen.submit(SPEC)
    fal_twin.fail_next("status", 500, error_type="runner_disconnected")
    with pytest.raises(TransientProviderError) as caught:
        gen.status(job)
    assert (caught.value.status_code, caught.value.code) == (500, "runner_disconnected")


def test_a_429_is_transient_with_retry_after_after_a_single_attempt(fal_twin):
    # Without MAX_ATTEMPTS=1 the SDK would retry this 10 times over ~44 s.
    fal_twin.fail_next("submit", 429, retry_after=7, times=10)
    started = time.monotonic()
    with pytest.raises(TransientProviderError) as caught:
        adapter(fal_twin).submit(SPEC)
    assert caught.value.retry_after_s == 7.0
    assert len(submits(fal_twin)) == 1
    assert time.monotonic() - started < 2


def test_an_nginx_gateway_error_is_transient_and_not_retried_by_the_sdk(fal_twin):
    gateway = Fault(502, "<html><center>nginx</center></html>")  # no x-fal-request-id
    fal_twin.faults.push("submit", gateway, times=10)
    with pytest.raises(TransientProviderError):
        adapter(fal_twin).submit(SPEC)
    assert len(submits(fal_twin)) == 1


def test_a_dropped_connection_is_transient(fal_twin):
    gen = adapter(fal_twin)
    job = gen.submit(SPEC)
    fal_twin.fail_next("status", drop=True)
    with pytest.raises(TransientProviderError, match="could not reach fal.ai"):
        gen.status(job)


def test_a_slow_submit_times_out_as_transient(fal_twin):
    fal_twin.fail_next("submit", delay_s=2.0)
    started = time.monotonic()
    with pytest.raises(TransientProviderError, match="timed out"):
        adapter(fal_twin, request_timeout_s=0.3).submit(SPEC)
    assert time.monotonic() - started < 1.5


def test_a_wrong_key_is_an_auth_failure_naming_fal_key(fal_twin):
    with pytest.raises(PermanentProviderError) as caught:
        FalVideoGenerator("wrong-id:wrong-secret").submit(SPEC)
    assert caught.value.category is FailureCategory.PROVIDER_AUTH
    assert caught.value.status_code == 401 and "FAL_KEY" in caught.value.message


def test_no_credentials_at_all_is_an_auth_failure_before_any_request(
    fal_twin, tmp_path, monkeypatch
):
    monkeypatch.setenv("FAL_HOME_DIR", str(tmp_path))  # no `fal auth login` token either
    with pytest.raises(PermanentProviderError) as caught:
        FalVideoGenerator(None).submit(SPEC)
    assert caught.value.category is FailureCategory.PROVIDER_AUTH
    assert "FAL_KEY" in caught.value.message
    assert fal_twin.requests == []


def test_an_unknown_model_or_a_foreign_id_fails_without_a_request(fal_twin):
    with pytest.raises(PermanentProviderError) as unknown:
        adapter(fal_twin).submit(replace(SPEC, model="fal-ai/veo3/image-to-video"))
    assert unknown.value.category is FailureCategory.INVALID_REQUEST
    with pytest.raises(PermanentProviderError) as foreign:
        adapter(fal_twin).status("offline-job-17")
    assert foreign.value.category is FailureCategory.INTERNAL
    assert fal_twin.requests == []


def test_a_queue_host_setting_overrides_the_host_the_sdk_read_at_import(fal_twin, monkeypatch):
    # For FAL_QUEUE_RUN_HOST from a .env file / st.secrets, which never reaches os.environ.
    monkeypatch.setattr(fal_client.client, "QUEUE_URL_FORMAT", "https://queue.fal.run/")
    gen = adapter(fal_twin, queue_host=f"localhost:{fal_twin.port}")
    job = gen.submit(SPEC)
    gen.status(job)
    assert {r.headers["host"] for r in fal_twin.requests} == {f"localhost:{fal_twin.port}"}


def test_env_alone_points_a_fresh_process_at_the_twin(fal_twin, fal_tls):
    """FAL_QUEUE_RUN_HOST + SSL_CERT_FILE is all it takes, with no test machinery in the way."""
    fal_twin.script_next_job(queue_polls=1, progress_polls=1)
    script = textwrap.dedent(
        """
        import json, sys
        import httpx
        from core.providers.base import VideoSpec
        from core.providers.fal_video import FalVideoGenerator

        gen = FalVideoGenerator(sys.argv[1])
        job = gen.submit(VideoSpec("a lighthouse", "https://bucket.example/s.png", duration_s=4,
                                   generate_audio=False))
        states = [gen.status(job).state.value for _ in range(3)]
        url = gen.result(job).url
        body = httpx.get(url).content
        print(json.dumps({"job": job, "states": states, "url": url, "ftyp": body[4:8].decode()}))
        """
    )
    env = {
        **os.environ,
        "FAL_QUEUE_RUN_HOST": fal_twin.host,
        "SSL_CERT_FILE": str(fal_tls.ca_bundle),
        "PYTHONPATH": str(REPO),
    }
    done = subprocess.run(
        [sys.executable, "-c", script, fal_twin.key],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["states"] == ["queued", "in_progress", "completed"]
    assert out["url"].startswith(f"https://{fal_twin.host}/") and out["ftyp"] == "ftyp"
    assert json.loads(json.dumps(submits(fal_twin)[0].json))["duration"] == "4s"


def test_a_job_failed_for_another_reason_is_provider_rejected_and_live_states_have_no_category(
    fal_twin,
):
    fal_twin.script_next_job(queue_polls=0, progress_polls=1, outcome="failed")
    gen = adapter(fal_twin)
    job = gen.submit(SPEC)

    running, final = poll_until_done(gen, job)

    assert running.error_category is None
    assert final.state is VideoJobState.FAILED
    assert final.error_category is FailureCategory.PROVIDER_REJECTED
    with pytest.raises(PermanentProviderError) as caught:
        gen.result(job)
    assert caught.value.category is FailureCategory.PROVIDER_REJECTED


# -- the still: presigned URL through, local file up to fal's CDN ------------------------------


@pytest.fixture
def local_still(tmp_path: Path) -> Path:
    path = tmp_path / "storage" / "users" / "u1" / "image.png"
    path.parent.mkdir(parents=True)
    path.write_bytes(make_png(1280, 720, "a lighthouse"))
    return path


def test_a_presigned_https_still_is_passed_through_without_any_upload(fal_twin):
    adapter(fal_twin).submit(SPEC)
    assert submits(fal_twin)[0].json["image_url"] == SPEC.image_url
    assert fal_twin.uploads == {}
    assert [r.path for r in fal_twin.requests] == [f"/{VEO}"]


def test_a_file_url_still_goes_to_fals_cdn_and_the_model_gets_the_cdn_url(fal_twin, local_still):
    job = adapter(fal_twin).submit(replace(SPEC, image_url=local_still.as_uri()))

    token, upload, submit = fal_twin.requests
    assert (token.method, token.path, token.query) == (
        "POST",
        "/storage/auth/token",
        {"storage_type": "fal-cdn-v3"},
    )
    assert token.headers["authorization"] == f"Key {fal_twin.key}"
    assert (upload.method, upload.path) == ("POST", "/files/upload")
    assert upload.headers["authorization"].startswith("Bearer ")
    assert upload.headers["x-fal-file-name"] == "image.png"
    assert upload.headers["content-type"] == "image/png"
    assert upload.body == local_still.read_bytes()
    (path, stored) = next(iter(fal_twin.uploads.items()))
    assert (stored.via, stored.lifecycle) == ("cdn", {"expiration_duration_seconds": 86400})
    assert submit.json["image_url"] == fal_twin.access_url(path)
    assert httpx.get(submit.json["image_url"]).content == local_still.read_bytes()
    assert parse_job_id(job)[1] in fal_twin.jobs


def test_when_the_cdn_upload_fails_the_sdk_falls_back_to_fals_storage_upload(fal_twin, local_still):
    fal_twin.fail_next("cdn_upload", 500)

    adapter(fal_twin).submit(replace(SPEC, image_url=local_still.as_uri()))

    (stored,) = fal_twin.uploads.values()
    assert (stored.via, stored.data) == ("storage", local_still.read_bytes())
    paths = [r.path for r in fal_twin.requests]
    assert paths[:3] == ["/storage/auth/token", "/files/upload", "/storage/upload/initiate"]
    assert submits(fal_twin)[-1].json["image_url"].startswith(f"{fal_twin.origin}/files/")


def test_a_wrong_key_at_the_upload_is_an_auth_failure_naming_fal_key_and_nothing_is_submitted(
    fal_twin, local_still
):
    with pytest.raises(PermanentProviderError) as caught:
        FalVideoGenerator("wrong-id:wrong-secret").submit(
            replace(SPEC, image_url=local_still.as_uri())
        )
    assert caught.value.category is FailureCategory.PROVIDER_AUTH
    assert caught.value.status_code == 401 and "FAL_KEY" in caught.value.message
    assert [r.path for r in fal_twin.requests] == ["/storage/auth/token"]


def test_an_upload_outage_is_transient(fal_twin, local_still):
    fal_twin.fail_next("cdn_token", 503, error_type="runner_scheduling_failure")
    with pytest.raises(TransientProviderError):
        adapter(fal_twin).submit(replace(SPEC, image_url=local_still.as_uri()))
    # The token request raises httpx's own HTTPStatusError, outside the SDK's error type.
    assert [r.path for r in fal_twin.requests] == ["/storage/auth/token"]


def test_a_missing_local_still_or_an_unfetchable_scheme_fails_before_any_request(
    fal_twin, tmp_path
):
    with pytest.raises(PermanentProviderError) as missing:
        adapter(fal_twin).submit(replace(SPEC, image_url=(tmp_path / "gone.png").as_uri()))
    assert missing.value.category is FailureCategory.STORAGE
    with pytest.raises(PermanentProviderError) as scheme:
        adapter(fal_twin).submit(replace(SPEC, image_url="s3://bucket/still.png"))
    assert scheme.value.category is FailureCategory.INVALID_REQUEST
    assert fal_twin.requests == []


# -- check(): what health calls ----------------------------------------------------------------


def test_check_reads_a_404_for_an_impossible_request_as_an_accepted_key(fal_twin):
    assert adapter(fal_twin).check() == f"fal: key accepted ({VEO})"
    (request,) = fal_twin.requests
    assert request.method == "GET"
    assert request.path == f"/fal-ai/veo3.1/requests/{CHECK_REQUEST_ID}/status"
    assert fal_twin.jobs == {}


def test_check_with_a_wrong_key_is_an_auth_failure_naming_fal_key(fal_twin):
    with pytest.raises(PermanentProviderError) as caught:
        FalVideoGenerator("wrong-id:wrong-secret").check()
    assert caught.value.category is FailureCategory.PROVIDER_AUTH
    assert caught.value.status_code == 401 and "check FAL_KEY" in caught.value.message


def test_check_when_fal_is_down_is_transient(fal_twin):
    fal_twin.fail_next("status", 503, error_type="runner_scheduling_failure")
    with pytest.raises(TransientProviderError) as caught:
        adapter(fal_twin).check()
    assert caught.value.status_code == 503
