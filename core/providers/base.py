"""The four provider ports. Each is one small interface with a real and an offline adapter.

Adapters translate their SDK's errors into `TransientProviderError` / `PermanentProviderError`
(core.errors) at the edge, so the orchestrator never imports openai, fal or botocore. Adapters do
no I/O in `__init__`, and leave retries to the orchestrator's tenacity policy (SDK retries off).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal, Protocol

from core.errors import FailureCategory

ImageQuality = Literal["standard", "hd"]
ImageStyle = Literal["natural", "vivid"]
VideoResolution = Literal["720p", "1080p"]
AspectRatio = Literal["16:9", "9:16"]


@dataclass(frozen=True)
class ImageSpec:
    """What we ask an image model for, in the seed's vocabulary; adapters map it to their model."""

    prompt: str
    width: int
    height: int
    quality: ImageQuality = "standard"
    style: ImageStyle = "vivid"
    model: str | None = None  # registry key; None means the adapter's default


@dataclass(frozen=True)
class GeneratedImage:
    data: bytes
    content_type: str  # e.g. "image/png"
    model: str
    revised_prompt: str | None = None


class ImageGenerator(Protocol):
    name: str

    def generate(self, spec: ImageSpec, *, timeout_s: float) -> GeneratedImage: ...

    def check(self) -> str:
        """The cheapest call that proves the credentials work; a short description on success,
        a ProviderError (PROVIDER_AUTH for bad credentials) on failure. Used by health."""
        ...


@dataclass(frozen=True)
class ModerationVerdict:
    flagged: bool
    categories: tuple[str, ...] = ()  # the flagged category names, e.g. ("violence/graphic",)


class Moderator(Protocol):
    name: str

    def moderate(self, texts: Sequence[str]) -> list[ModerationVerdict]:
        """One verdict per text, in order, from a single call."""
        ...

    def check(self) -> str: ...


@dataclass(frozen=True)
class VideoSpec:
    prompt: str
    # http(s):// (presigned) passes through; file:// (local storage) is read by the offline
    # provider and uploaded to fal's CDN by the fal adapter.
    image_url: str
    duration_s: int = 8
    resolution: VideoResolution = "720p"
    aspect_ratio: AspectRatio = "16:9"
    generate_audio: bool = True
    model: str | None = None
    negative_prompt: str | None = None
    seed: int | None = None


class VideoJobState(StrEnum):
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"


@dataclass(frozen=True)
class VideoJobStatus:
    state: VideoJobState
    queue_position: int | None = None
    progress: float | None = None  # 0..1 when the provider says; None when it doesn't
    logs: tuple[str, ...] = ()
    error: str | None = None  # set when state is FAILED
    error_category: FailureCategory | None = None  # e.g. CONTENT_POLICY, when the provider says


@dataclass(frozen=True)
class GeneratedVideo:
    url: str  # where to download the finished clip (https:// or file://)
    content_type: str = "video/mp4"


class VideoGenerator(Protocol):
    """A queue-style video service. The id from `submit` is opaque to the engine and must carry
    everything needed to reattach after a restart (e.g. endpoint and request id)."""

    name: str

    def submit(self, spec: VideoSpec) -> str: ...

    def status(self, request_id: str) -> VideoJobStatus: ...

    def result(self, request_id: str) -> GeneratedVideo: ...

    def cancel(self, request_id: str) -> bool:
        """Ask the provider to stop; True when it accepted the cancellation."""
        ...

    def check(self) -> str: ...


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    content_type: str


class Storage(Protocol):
    name: str

    def put(self, key: str, data: bytes, content_type: str) -> None: ...

    def get(self, key: str) -> bytes: ...

    def head(self, key: str) -> StoredObject | None:
        """Size and type of a stored object, or None when it does not exist."""
        ...

    def copy(self, source_key: str, key: str) -> None:
        """Store under `key` the object at `source_key`, bytes and content type, without the
        bytes coming through here (a server-side copy on S3)."""
        ...

    def delete(self, key: str) -> None: ...

    def url(self, key: str, *, expires_s: int) -> str:
        """A URL a browser or provider can fetch: presigned for S3, file:// for a local folder."""
        ...

    def check(self) -> str: ...


@dataclass(frozen=True)
class Providers:
    image: ImageGenerator
    video: VideoGenerator
    moderator: Moderator
    storage: Storage
    labels: dict[str, str] = field(default_factory=dict)  # capability -> "offline" / "openai"...
