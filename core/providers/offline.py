"""Offline adapters, the embedded default when no keys are set: they draw, encode, moderate and
store for real on this machine, with a configurable latency so the live page looks like production.
"""

from __future__ import annotations

import json
import math
import mimetypes
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

from core.errors import PermanentProviderError, TransientProviderError
from core.media import paint_scene, probe_image, render_clip
from core.providers.base import (
    GeneratedImage,
    GeneratedVideo,
    ImageSpec,
    ModerationVerdict,
    StoredObject,
    VideoJobState,
    VideoJobStatus,
    VideoSpec,
)
from core.providers.download import fetch_bytes

_PROVIDER = "offline"
_MAX_SIDE = 4096  # like the real models, refuse sizes nobody asks for instead of eating memory


class _NoCredentials:
    def check(self) -> str:
        return "offline: runs on this machine, no credentials needed"


class OfflineImageGenerator(_NoCredentials):
    name = _PROVIDER

    def __init__(self, latency_s: float) -> None:
        self.latency_s = latency_s

    def generate(self, spec: ImageSpec, *, timeout_s: float) -> GeneratedImage:
        if not (0 < spec.width <= _MAX_SIDE and 0 < spec.height <= _MAX_SIDE):
            raise PermanentProviderError(
                f"size {spec.width}x{spec.height} is not supported",
                provider=_PROVIDER,
                status_code=400,
            )
        if self.latency_s > timeout_s:
            time.sleep(timeout_s)  # a real client gives up at its timeout, not at the latency
            raise TransientProviderError("offline image timed out", provider=_PROVIDER)
        time.sleep(self.latency_s)
        png = paint_scene(
            spec.prompt,
            width=spec.width,
            height=spec.height,
            vivid=spec.style == "vivid",
            detailed=spec.quality == "hd",
        )
        return GeneratedImage(data=png, content_type="image/png", model="offline-image")


# --- Video: a queue "service" whose jobs live on disk ----------------------------------------

_SIZES = {"720p": (1280, 720), "1080p": (1920, 1080)}  # 16:9; 9:16 swaps the two sides
_FPS = 24
_JOB_ID = re.compile(r"offline-[0-9a-f]{32}")
# Like a real provider's GPUs, the offline one has a fixed capacity: one encode per core at a
# time, shared by every generator in the process. Without it, 200 concurrent runs would start 200
# x264 encoders at once (about 75 MB each) and thrash two cores.
_ENCODER_SLOTS = threading.BoundedSemaphore(os.cpu_count() or 2)


class OfflineVideoGenerator(_NoCredentials):
    """Each job is a folder under `job_dir` (job.json, the input image, the finished mp4), so the
    state outlives our process like a real queue's: a restarted app reattaches by request id.

    A job's schedule follows wall-clock time since submission, with the latency recorded at submit:
    queued for `latency`, generating for `3 * latency`, then completed.
    """

    name = _PROVIDER

    def __init__(self, job_dir: Path, latency_s: float) -> None:
        self.job_dir = job_dir
        self.latency_s = latency_s
        # Striped locks so threads asking for the same result encode it once; two jobs sharing a
        # stripe just take turns. Across processes the atomic rename keeps a race harmless.
        self._encode_locks = [threading.Lock() for _ in range(16)]

    def submit(self, spec: VideoSpec) -> str:
        time.sleep(self.latency_s)
        image = _read_image(spec.image_url)
        try:
            probe_image(image)
        except ValueError as exc:
            raise PermanentProviderError(f"image_url: {exc}", provider=_PROVIDER) from exc
        request_id = f"offline-{uuid.uuid4().hex}"
        folder = self.job_dir / request_id
        folder.mkdir(parents=True)
        _write_atomic(folder / "image", image)
        job = {"spec": asdict(spec), "submitted_at": time.time(), "latency_s": self.latency_s}
        # job.json goes last: a job exists for status() only once everything it needs is there.
        _write_json(folder / "job.json", job)
        return request_id

    def status(self, request_id: str) -> VideoJobStatus:
        return _job_status(self._load(request_id))

    def result(self, request_id: str) -> GeneratedVideo:
        job = self._load(request_id)
        state = _job_status(job).state
        if state is not VideoJobState.COMPLETED:
            raise PermanentProviderError(
                f"request {request_id} is {state.value}, not completed", provider=_PROVIDER
            )
        folder = self.job_dir / request_id
        video = folder / "video.mp4"
        with self._encode_locks[hash(request_id) % len(self._encode_locks)]:
            if not video.exists():
                with _ENCODER_SLOTS:
                    clip = _render_job(folder, job["spec"], request_id)
                _write_atomic(video, clip)
        return GeneratedVideo(url=video.as_uri())

    def cancel(self, request_id: str) -> bool:
        job = self._load(request_id)
        if _job_status(job).state is VideoJobState.COMPLETED:
            return False
        _write_json(self.job_dir / request_id / "job.json", {**job, "cancelled": True})
        return True

    def _load(self, request_id: str) -> dict[str, Any]:
        # The id becomes a path: accept only our own shape, so no id can reach outside job_dir.
        path = self.job_dir / request_id / "job.json"
        if _JOB_ID.fullmatch(request_id) and path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))
        raise PermanentProviderError(
            f"unknown request id {request_id!r}", provider=_PROVIDER, status_code=404
        )


def _render_job(folder: Path, spec: dict[str, Any], request_id: str) -> bytes:
    width, height = _SIZES[spec["resolution"]]
    if spec["aspect_ratio"] == "9:16":
        width, height = height, width
    return render_clip(
        (folder / "image").read_bytes(),
        width=width,
        height=height,
        duration_s=spec["duration_s"],
        fps=_FPS,
        with_audio=spec["generate_audio"],
        seed=spec["seed"] if spec["seed"] is not None else int(request_id[-8:], 16),
    )


def _job_status(job: dict[str, Any]) -> VideoJobStatus:
    if job.get("cancelled"):
        return VideoJobStatus(VideoJobState.FAILED, error="cancelled")
    latency = job["latency_s"]
    elapsed = time.time() - job["submitted_at"]
    if elapsed < latency:
        position = min(2, int(3 * (latency - elapsed) / latency))  # 2, 1, 0 as the wait runs out
        return VideoJobStatus(VideoJobState.QUEUED, queue_position=position)
    progress = min(1.0, (elapsed - latency) / (3 * latency)) if latency else 1.0
    logs = _progress_logs(progress, round(job["spec"]["duration_s"] * _FPS))
    if progress < 1.0:
        return VideoJobStatus(VideoJobState.IN_PROGRESS, progress=progress, logs=logs)
    return VideoJobStatus(VideoJobState.COMPLETED, progress=1.0, logs=logs)


def _progress_logs(progress: float, total_frames: int) -> tuple[str, ...]:
    """fal-style log lines for how far a job has got; the list only grows, as fal's does."""
    logs = ["Loading model", "Encoding prompt and first frame"]
    chunks = math.floor(progress * 8)
    logs += [
        f"Generating frames {total_frames * k // 8}/{total_frames}" for k in range(1, chunks + 1)
    ]
    if progress >= 1.0:
        logs.append("Decoding video")
    return tuple(logs)


def _read_image(url: str) -> bytes:
    parsed = urlparse(url)
    if parsed.scheme != "file":
        return fetch_bytes(url, timeout_s=30)
    # Like a real provider, this one reads whatever URL it is handed; the caller is our pipeline.
    path = Path(url2pathname(parsed.path))  # url2pathname undoes the %-escapes itself
    try:
        return path.read_bytes()
    except OSError as exc:
        raise PermanentProviderError(f"image_url not readable: {url}", provider=_PROVIDER) from exc


# --- Moderation -------------------------------------------------------------------------------

# OpenAI's category names for terms we know; any other blocklisted term counts as "violence".
_CATEGORIES = {
    "gore": "violence/graphic",
    "beheading": "violence/graphic",
    "nazi": "hate",
    "suicide": "self-harm",
}


class KeywordModerator(_NoCredentials):
    """Flags a text when a blocklisted word or phrase appears in it as a whole word ("gore", not
    "gory"), on case-folded text so "GORE" and "Gore" count too."""

    name = _PROVIDER

    def __init__(self, blocklist: Sequence[str], latency_s: float = 0.0) -> None:
        self.latency_s = latency_s
        self._rules: list[tuple[re.Pattern[str], str]] = []
        for term in blocklist:
            words = term.casefold().split()
            if not words:
                continue
            # Lookarounds rather than \b, which misbehaves next to terms that start or end with a
            # non-word character; any whitespace between the words of a phrase matches.
            pattern = r"(?<!\w)" + r"\s+".join(map(re.escape, words)) + r"(?!\w)"
            self._rules.append((re.compile(pattern), _CATEGORIES.get(" ".join(words), "violence")))

    def moderate(self, texts: Sequence[str]) -> list[ModerationVerdict]:
        time.sleep(self.latency_s)
        verdicts = []
        for text in texts:
            folded = text.casefold()
            hits = sorted({category for rule, category in self._rules if rule.search(folded)})
            verdicts.append(ModerationVerdict(flagged=bool(hits), categories=tuple(hits)))
        return verdicts


# --- Storage ----------------------------------------------------------------------------------

_META = ".meta.json"


class LocalStorage:
    """A folder as object storage. Keys are relative posix paths; each object's content type is
    kept in a sidecar `<file>.meta.json` (guessed from the extension when the sidecar is missing),
    so a key means the same here as on S3 whatever its extension says."""

    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = root

    def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, data)
        _write_json(_sidecar(path), {"content_type": content_type})

    def get(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def head(self, key: str) -> StoredObject | None:
        path = self._path(key)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return None
        try:
            content_type = json.loads(_sidecar(path).read_text(encoding="utf-8"))["content_type"]
        except (OSError, ValueError, KeyError):
            content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return StoredObject(key=key, size=size, content_type=content_type)

    def copy(self, source_key: str, key: str) -> None:
        """A hard link (a stored file is never changed in place: a put writes a new file and
        renames it over the old), so the copy costs no bytes; a copy of the bytes where the
        file system has no hard links."""
        source, path = self._path(source_key), self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        _link_atomic(source, path)
        if _sidecar(source).exists():
            _link_atomic(_sidecar(source), _sidecar(path))

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        _sidecar(path).unlink(missing_ok=True)

    def url(self, key: str, *, expires_s: int) -> str:
        return self._path(key).absolute().as_uri()  # a local file never expires

    def check(self) -> str:
        return f"local folder {self.root}"

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        # Empty, "." and ".." segments cover absolute keys, trailing slashes and escapes upward.
        if (
            any(part in ("", ".", "..") for part in parts)
            or "\\" in key
            or "\x00" in key
            or key.endswith(_META)
        ):
            raise ValueError(f"storage key {key!r} is not a plain relative path")
        return self.root.joinpath(*parts)


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + _META)


# --- Files ------------------------------------------------------------------------------------


def _write_atomic(path: Path, data: bytes) -> None:
    """Readers see the old file or the new one, never half of one: write aside, then rename."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(temp, 0o644)  # mkstemp makes it private; a stored file should read like any other
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _link_atomic(source: Path, path: Path) -> None:
    """`path` becomes `source`'s file (readers see the old file or the new one, as with
    _write_atomic); its bytes are copied only where a hard link is refused."""
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        try:
            os.link(source, temp)
        except FileNotFoundError:
            raise
        except OSError:  # no hard links here (some network and FAT file systems)
            shutil.copyfile(source, temp)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _write_json(path: Path, value: dict[str, Any]) -> None:
    _write_atomic(path, json.dumps(value, sort_keys=True).encode("utf-8"))
