"""The validated user request, in the original system's shape (imagePrompt, imageConfig, ...).

`parse_request` is the only way in: it turns pydantic's errors into a RequestValidationError whose
messages name the field as the user knows it (e.g. "imageConfig.size").
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from core.errors import RequestValidationError
from core.providers import catalog

# 4,000 characters is the smallest image-model limit in our registry (dall-e-3); safe for all.
IMAGE_PROMPT_MAX_CHARS = 4000
VIDEO_PROMPT_MAX_CHARS = 2000
WEBHOOK_URL_MAX_CHARS = 2000
DISPLAY_NAME_MAX_CHARS = 120

WebhookEvent = Literal["started", "step", "completed"]
WEBHOOK_EVENTS: tuple[WebhookEvent, ...] = ("started", "step", "completed")
ImageSize = Literal["1024x1024", "1792x1024", "1024x1792"]
VIDEO_DIMENSIONS = {
    ("720p", "16:9"): (1280, 720),
    ("720p", "9:16"): (720, 1280),
    ("1080p", "16:9"): (1920, 1080),
    ("1080p", "9:16"): (1080, 1920),
}
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# Bidirectional overrides and isolates reorder what is displayed: "fox \u202egnp.exe\u202c"
# would read as "fox exe.png".
_BIDI_CHARS = re.compile("[\u202a-\u202e\u2066-\u2069]")


def text_problem(value: str) -> str | None:
    """Why `value` cannot be kept as user text (a prompt or a name), or None when it can."""
    if _CONTROL_CHARS.search(value):
        return "contains control characters"
    if _BIDI_CHARS.search(value):
        return "contains bidirectional control characters (they reorder how text displays)"
    return None


def clean_name(name: str, field: str, max_chars: int) -> str:
    """A project, template or display name with its whitespace collapsed, or a
    RequestValidationError naming `field`."""
    name = " ".join(unicodedata.normalize("NFC", name).split())
    if not name:
        raise RequestValidationError({field: "needs a name"})
    if len(name) > max_chars:
        raise RequestValidationError({field: f"name is too long (at most {max_chars} characters)"})
    problem = text_problem(name)
    if problem:
        raise RequestValidationError({field: f"name {problem}"})
    return name


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ImageConfig(_Strict):
    style: Literal["natural", "vivid"] = "vivid"
    quality: Literal["standard", "hd"] = "standard"
    # Landscape by default: the still becomes the first frame of a 16:9 clip.
    size: ImageSize = "1792x1024"

    @property
    def width(self) -> int:
        return int(self.size.split("x")[0])

    @property
    def height(self) -> int:
        return int(self.size.split("x")[1])


class VideoConfig(_Strict):
    duration: Literal["4s", "6s", "8s"] = "8s"
    resolution: Literal["720p", "1080p"] = "720p"
    generate_audio: bool = Field(True, alias="generateAudio")
    # Not in the seed: None follows the image (a portrait still makes a 9:16 clip).
    aspect_ratio: Literal["16:9", "9:16"] | None = Field(None, alias="aspectRatio")
    # Not in the seed: the same seed and prompts give the same take; batches vary it.
    seed: int | None = Field(None, ge=0, le=2**31 - 1)

    @property
    def duration_s(self) -> int:
        return int(self.duration.removesuffix("s"))


class WorkflowRequest(_Strict):
    image_prompt: str = Field(alias="imagePrompt", max_length=IMAGE_PROMPT_MAX_CHARS)
    video_prompt: str = Field(alias="videoPrompt", max_length=VIDEO_PROMPT_MAX_CHARS)
    image_config: ImageConfig = Field(default_factory=ImageConfig, alias="imageConfig")
    video_config: VideoConfig = Field(default_factory=VideoConfig, alias="videoConfig")
    project_id: int | None = Field(None, alias="projectId", ge=1)
    # Not in the seed: a model from the registries; None means the installation's default.
    image_model: str | None = Field(None, alias="imageModel")
    video_model: str | None = Field(None, alias="videoModel")
    # Where this run's events go (signed with the owner's secret), and which: "completed" is
    # the run's end, whatever its status. Whether the address is public is checked at start.
    webhook_url: str | None = Field(None, alias="webhookUrl", max_length=WEBHOOK_URL_MAX_CHARS)
    webhook_events: tuple[WebhookEvent, ...] = Field(WEBHOOK_EVENTS, alias="webhookEvents")

    @field_validator("image_prompt", "video_prompt", mode="before")
    @classmethod
    def _clean_prompt(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        value = unicodedata.normalize("NFC", value).strip()
        if not value:
            raise ValueError("must not be empty")
        problem = text_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("webhook_url", mode="before")
    @classmethod
    def _webhook_url(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        value = value.strip()
        if not value:
            return None
        problem = webhook_url_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("webhook_events")
    @classmethod
    def _webhook_events(cls, value: tuple[WebhookEvent, ...]) -> tuple[WebhookEvent, ...]:
        if not value:
            raise ValueError("needs at least one event (started, step, completed)")
        return tuple(e for e in WEBHOOK_EVENTS if e in value)  # one order, no repeats

    @field_validator("image_model")
    @classmethod
    def _known_image_model(cls, value: str | None) -> str | None:
        return _registered(value, catalog.IMAGE_MODELS)

    @field_validator("video_model")
    @classmethod
    def _known_video_model(cls, value: str | None) -> str | None:
        return _registered(value, catalog.VIDEO_MODELS)

    @property
    def aspect_ratio(self) -> Literal["16:9", "9:16"]:
        if self.video_config.aspect_ratio:
            return self.video_config.aspect_ratio
        portrait = self.image_config.height > self.image_config.width
        return "9:16" if portrait else "16:9"

    @property
    def video_dimensions(self) -> tuple[int, int]:
        return VIDEO_DIMENSIONS[(self.video_config.resolution, self.aspect_ratio)]

    def to_json(self) -> dict[str, Any]:
        """The request as stored on the workflow row, with the seed's field names."""
        return self.model_dump(mode="json", by_alias=True)


def webhook_url_problem(url: str) -> str | None:
    """Why `url` cannot be a webhook address by its shape alone (the address it resolves to is
    core.webhooks' business), or None."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return "is not a valid URL"
    if parsed.scheme not in ("http", "https"):
        return "must start with http:// or https://"
    if not parsed.host:
        return "needs a host name"
    if parsed.userinfo:
        return "must not carry a user name or password"
    return None


def _registered(value: str | None, registry: Mapping[str, Any]) -> str | None:
    if value is not None and value not in registry:
        raise ValueError(f"must be one of {', '.join(registry)}")
    return value


def parse_request(data: dict[str, Any]) -> WorkflowRequest:
    """Validate a request dict (seed field names), or raise RequestValidationError."""
    try:
        return WorkflowRequest.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(problems_of(exc.errors())) from None


def problems_of(errors: Iterable[Any]) -> dict[str, str]:
    """Pydantic's errors as {field: readable message}, the field as the user knows it (the
    API's errors for a body parsed into WorkflowRequest come through here too)."""
    problems: dict[str, str] = {}
    for error in errors:
        field = ".".join(str(part) for part in error["loc"]) or "request"
        problems.setdefault(field, _message(error))
    return problems


def _message(error: Any) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "is not a known field"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}"
    if kind == "string_too_long":
        return f"is too long (at most {ctx.get('max_length'):,} characters)"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return error["msg"].lower()
