"""The offline video service: a queue whose jobs live on disk, reporting like fal; real clips."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import pytest

from core.errors import PermanentProviderError
from core.media import probe_video, render_clip
from core.providers import offline
from core.providers.base import GeneratedVideo, VideoJobState, VideoJobStatus, VideoSpec
from core.providers.offline import OfflineVideoGenerator


def wait_for(
    service: OfflineVideoGenerator,
    request_id: str,
    done: Callable[[VideoJobStatus], bool],
    deadline_s: float = 10,
) -> list[VideoJobStatus]:
    """Poll until `done` holds; every status seen, in order."""
    seen = [service.status(request_id)]
    deadline = time.monotonic() + deadline_s
    while not done(seen[-1]):
        assert time.monotonic() < deadline, f"gave up waiting; last status {seen[-1]}"
        time.sleep(0.01)
        seen.append(service.status(request_id))
    return seen


def completed(status: VideoJobStatus) -> bool:
    return status.state is VideoJobState.COMPLETED


def read_url(url: str) -> bytes:
    assert url.startswith("file://")
    return Path(url2pathname(urlparse(url).path)).read_bytes()


@dataclass(frozen=True)
class FinishedJob:
    service: OfflineVideoGenerator
    request_id: str
    video: GeneratedVideo


@pytest.fixture
def jobs(tmp_path: Path) -> Path:
    return tmp_path / "offline-provider"


def test_a_job_walks_from_queued_through_in_progress_to_completed(
    jobs: Path, photo_url: str
) -> None:
    service = OfflineVideoGenerator(jobs, latency_s=0.2)

    seen = wait_for(service, service.submit(VideoSpec("waves", photo_url)), completed)

    states = [s.state for s in seen]
    changes = [state for i, state in enumerate(states) if i == 0 or state != states[i - 1]]
    assert changes == [VideoJobState.QUEUED, VideoJobState.IN_PROGRESS, VideoJobState.COMPLETED]
    positions = [s.queue_position or 0 for s in seen if s.state is VideoJobState.QUEUED]
    assert positions == sorted(positions, reverse=True)
    assert set(positions) <= {0, 1, 2}
    progress = [s.progress or 0.0 for s in seen if s.state is VideoJobState.IN_PROGRESS]
    assert progress == sorted(progress)
    assert all(0 <= p < 1 for p in progress)
    assert seen[-1].progress == 1.0
    assert seen[-1].logs[0] == "Loading model"
    assert "Generating frames 192/192" in seen[-1].logs


def test_the_logs_only_grow_while_a_job_runs(jobs: Path, photo_url: str) -> None:
    service = OfflineVideoGenerator(jobs, latency_s=0.05)

    seen = wait_for(service, service.submit(VideoSpec("waves", photo_url)), completed)

    for earlier, later in zip(seen, seen[1:], strict=False):
        assert later.logs[: len(earlier.logs)] == earlier.logs


def test_without_latency_a_job_is_completed_at_once(jobs: Path, photo_url: str) -> None:
    service = OfflineVideoGenerator(jobs, latency_s=0)

    status = service.status(service.submit(VideoSpec("waves", photo_url)))

    assert status.state is VideoJobState.COMPLETED
    assert status.progress == 1.0


def test_a_restarted_app_reattaches_to_its_job_by_request_id(jobs: Path, photo_url: str) -> None:
    before = OfflineVideoGenerator(jobs, latency_s=0.05)
    request_id = before.submit(VideoSpec("waves", photo_url))

    # New settings after the restart do not reschedule a job already submitted.
    after_restart = OfflineVideoGenerator(jobs, latency_s=60)

    seen = wait_for(after_restart, request_id, completed)
    assert seen[-1] == before.status(request_id)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, photo: bytes) -> FinishedJob:
    """One completed 4 s job with its result fetched once, shared by the tests that only read."""
    folder = tmp_path_factory.mktemp("finished")
    (folder / "photo.png").write_bytes(photo)
    service = OfflineVideoGenerator(folder / "jobs", latency_s=0)
    spec = VideoSpec("waves", (folder / "photo.png").as_uri(), duration_s=4, generate_audio=False)
    request_id = service.submit(spec)
    return FinishedJob(service, request_id, service.result(request_id))


def test_the_result_is_a_real_clip_at_the_asked_resolution_and_length(
    finished: FinishedJob,
) -> None:
    probe = probe_video(read_url(finished.video.url))

    assert (probe.width, probe.height, probe.has_audio) == (1280, 720, False)
    assert probe.duration_s == pytest.approx(4, abs=0.05)
    assert finished.video.content_type == "video/mp4"


def test_asking_for_the_result_again_returns_the_same_file_unchanged(
    finished: FinishedJob,
) -> None:
    written = Path(url2pathname(urlparse(finished.video.url).path)).stat().st_mtime_ns

    again = finished.service.result(finished.request_id)

    assert again == finished.video
    assert Path(url2pathname(urlparse(again.url).path)).stat().st_mtime_ns == written


def test_a_portrait_request_gets_a_portrait_clip(jobs: Path, photo_url: str) -> None:
    service = OfflineVideoGenerator(jobs, latency_s=0)
    spec = VideoSpec("waves", photo_url, duration_s=4, aspect_ratio="9:16", generate_audio=True)

    probe = probe_video(read_url(service.result(service.submit(spec)).url))

    assert (probe.width, probe.height, probe.has_audio) == (720, 1280, True)


def test_threads_racing_for_one_result_share_one_encode(
    jobs: Path, photo_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    encodes = []

    def counting_render_clip(*args: Any, **kwargs: Any) -> bytes:
        encodes.append(1)
        return render_clip(*args, **kwargs)

    monkeypatch.setattr(offline, "render_clip", counting_render_clip)
    service = OfflineVideoGenerator(jobs, latency_s=0)
    request_id = service.submit(VideoSpec("waves", photo_url, duration_s=4, generate_audio=False))

    with ThreadPoolExecutor(max_workers=4) as pool:
        urls = set(pool.map(lambda _: service.result(request_id).url, range(4)))

    assert len(urls) == 1
    assert len(encodes) == 1
    assert probe_video(read_url(urls.pop())).duration_s == pytest.approx(4, abs=0.05)
    assert not [p for p in (jobs / request_id).iterdir() if p.name.endswith(".tmp")]


def test_many_threads_submit_and_poll_at_once(jobs: Path, photo_url: str) -> None:
    service = OfflineVideoGenerator(jobs, latency_s=0.02)

    def submit_and_wait(_: int) -> str:
        request_id = service.submit(VideoSpec("waves", photo_url))
        wait_for(service, request_id, completed)
        return request_id

    with ThreadPoolExecutor(max_workers=12) as pool:
        ids = list(pool.map(submit_and_wait, range(24)))

    assert len(set(ids)) == 24
    assert all(i.startswith("offline-") for i in ids)


def test_a_cancelled_job_fails_with_cancelled_and_has_no_result(jobs: Path, photo_url: str) -> None:
    service = OfflineVideoGenerator(jobs, latency_s=0.05)
    request_id = service.submit(VideoSpec("waves", photo_url))

    assert service.cancel(request_id) is True

    status = service.status(request_id)
    assert (status.state, status.error) == (VideoJobState.FAILED, "cancelled")
    with pytest.raises(PermanentProviderError):
        service.result(request_id)


def test_a_completed_job_cannot_be_cancelled(jobs: Path, photo_url: str) -> None:
    service = OfflineVideoGenerator(jobs, latency_s=0)
    request_id = service.submit(VideoSpec("waves", photo_url))

    assert service.cancel(request_id) is False
    assert service.status(request_id).state is VideoJobState.COMPLETED


def test_the_result_of_an_unfinished_job_is_refused(jobs: Path, photo_url: str) -> None:
    service = OfflineVideoGenerator(jobs, latency_s=0.05)
    request_id = service.submit(VideoSpec("waves", photo_url))

    with pytest.raises(PermanentProviderError, match="not completed"):
        service.result(request_id)


@pytest.mark.parametrize(
    "request_id", ["offline-" + "0" * 32, "nope", "../../etc/passwd", "offline-../../x", ""]
)
def test_an_unknown_request_id_is_a_permanent_error(jobs: Path, request_id: str) -> None:
    service = OfflineVideoGenerator(jobs, latency_s=0)

    for call in (service.status, service.result, service.cancel):
        with pytest.raises(PermanentProviderError, match="unknown request id"):
            call(request_id)


def test_an_image_url_that_does_not_exist_is_refused(jobs: Path, tmp_path: Path) -> None:
    service = OfflineVideoGenerator(jobs, latency_s=0)

    with pytest.raises(PermanentProviderError):
        service.submit(VideoSpec("waves", (tmp_path / "missing.png").as_uri()))


def test_an_image_url_that_is_not_an_image_is_refused(jobs: Path, tmp_path: Path) -> None:
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    service = OfflineVideoGenerator(jobs, latency_s=0)

    with pytest.raises(PermanentProviderError, match="image_url"):
        service.submit(VideoSpec("waves", text.as_uri()))


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Keep request lines out of the test output."""


@pytest.fixture
def http_folder(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served over plain HTTP on a free local port, as a presigned bucket would be."""
    folder = tmp_path / "served"
    folder.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_an_image_url_over_http_is_fetched(
    jobs: Path, photo: bytes, http_folder: tuple[Path, str]
) -> None:
    folder, base = http_folder
    (folder / "photo.png").write_bytes(photo)
    service = OfflineVideoGenerator(jobs, latency_s=0)

    request_id = service.submit(VideoSpec("waves", f"{base}/photo.png"))

    assert (jobs / request_id / "image").read_bytes() == photo


def test_an_image_url_answering_404_is_a_permanent_error(
    jobs: Path, http_folder: tuple[Path, str]
) -> None:
    _, base = http_folder
    service = OfflineVideoGenerator(jobs, latency_s=0)

    with pytest.raises(PermanentProviderError) as caught:
        service.submit(VideoSpec("waves", f"{base}/missing.png"))
    assert caught.value.status_code == 404
