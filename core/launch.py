"""What the create page launches: its fields as a request payload, batch variations and their
rules, the cost estimate, and prefill from a stored request or template, where unknown values
are reported and replaced by defaults rather than kept. The form's wording is core.ui.labels."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, get_args

from sqlalchemy.orm import Session

from core import credits, prompts
from core.auth import UserView
from core.errors import BudgetExceededError, InsufficientCreditsError, RequestValidationError
from core.providers import catalog
from core.schemas import (
    WEBHOOK_EVENTS,
    ImageConfig,
    VideoConfig,
    WorkflowRequest,
    parse_request,
)

STYLES: tuple[str, ...] = get_args(ImageConfig.model_fields["style"].annotation)
QUALITIES: tuple[str, ...] = get_args(ImageConfig.model_fields["quality"].annotation)
SIZES: tuple[str, ...] = get_args(ImageConfig.model_fields["size"].annotation)
DURATIONS: tuple[str, ...] = get_args(VideoConfig.model_fields["duration"].annotation)
RESOLUTIONS: tuple[str, ...] = get_args(VideoConfig.model_fields["resolution"].annotation)
# "auto" is the page's name for None: the clip follows the image's orientation.
ASPECTS: tuple[str, ...] = (
    "auto",
    *get_args(get_args(VideoConfig.model_fields["aspect_ratio"].annotation)[0]),
)

MAX_BATCH = 10


@dataclass(frozen=True)
class FormFields:
    """The create form, as plain values (the page keeps each in a widget)."""

    image_prompt: str = ""
    video_prompt: str = ""
    style: str = "vivid"
    quality: str = "standard"
    size: str = "1792x1024"
    duration: str = "8s"
    resolution: str = "720p"
    generate_audio: bool = True
    aspect_ratio: str = "auto"
    project_id: int | None = None
    image_model: str | None = None  # None: the installation's default (IMAGE_MODEL)
    video_model: str | None = None  # None: the installation's default (VIDEO_MODEL)
    webhook_url: str = ""  # empty: no webhook of the run's own
    webhook_events: list[str] = field(default_factory=lambda: list(WEBHOOK_EVENTS))

    def payload(self) -> dict[str, Any]:
        """The request in the seed's shape, as `parse_request` and the engine take it."""
        video: dict[str, Any] = {
            "duration": self.duration,
            "resolution": self.resolution,
            "generateAudio": self.generate_audio,
        }
        if self.aspect_ratio != "auto":
            video["aspectRatio"] = self.aspect_ratio
        payload: dict[str, Any] = {
            "imagePrompt": self.image_prompt,
            "videoPrompt": self.video_prompt,
            "imageConfig": {"style": self.style, "quality": self.quality, "size": self.size},
            "videoConfig": video,
        }
        if self.project_id is not None:
            payload["projectId"] = self.project_id
        if self.image_model is not None:
            payload["imageModel"] = self.image_model
        if self.video_model is not None:
            payload["videoModel"] = self.video_model
        if self.webhook_url.strip():
            payload["webhookUrl"] = self.webhook_url
            payload["webhookEvents"] = list(self.webhook_events)
        return payload


_CHOICES: dict[str, tuple[Any, ...]] = {
    "style": STYLES,
    "quality": QUALITIES,
    "size": SIZES,
    "duration": DURATIONS,
    "resolution": RESOLUTIONS,
    "aspect_ratio": ASPECTS,
    "generate_audio": (True, False),
}


def fields_from_request(raw: Mapping[str, Any]) -> tuple[FormFields, list[str]]:
    """Form values from a stored request (seed field names). A value the form cannot offer
    (an old or hand-edited request) falls back to the default and is named in the notices."""
    image = raw.get("imageConfig") or {}
    video = raw.get("videoConfig") or {}
    found: dict[str, Any] = {
        "style": image.get("style"),
        "quality": image.get("quality"),
        "size": image.get("size"),
        "duration": video.get("duration"),
        "resolution": video.get("resolution"),
        "generate_audio": video.get("generateAudio", video.get("generate_audio")),
        "aspect_ratio": video.get("aspectRatio", video.get("aspect_ratio")) or "auto",
    }
    defaults, notices, values = FormFields(), [], {}
    for name, value in found.items():
        if value is None:
            continue
        if value in _CHOICES[name] and type(value) is type(getattr(defaults, name)):
            values[name] = value
        else:
            notices.append(
                f"{name.replace('_', ' ')} {value!r} is not available; "
                f"using {getattr(defaults, name)!r} instead"
            )
    for name, key in (("image_prompt", "imagePrompt"), ("video_prompt", "videoPrompt")):
        if isinstance(raw.get(key), str):
            values[name] = raw[key]
    if isinstance(raw.get("webhookUrl"), str):
        values["webhook_url"] = raw["webhookUrl"]
        events = raw.get("webhookEvents")
        if isinstance(events, list):
            values["webhook_events"] = [e for e in WEBHOOK_EVENTS if e in events]
    project_id = raw.get("projectId")
    if isinstance(project_id, int) and not isinstance(project_id, bool):
        values["project_id"] = project_id
    for name, key, known in (
        ("image_model", "imageModel", catalog.IMAGE_MODELS),
        ("video_model", "videoModel", catalog.VIDEO_MODELS),
    ):
        model = raw.get(key)
        if model in known:
            values[name] = model
        elif model is not None:
            notices.append(
                f"{name.replace('_', ' ')} {model!r} is not available; using the default"
            )
    return replace(defaults, **values), notices


def snapped_duration_s(form: FormFields, default_video_model: str) -> int | None:
    """The clip length the chosen video model really renders, when it differs from the asked
    one (e.g. Kling makes 5 or 10 s clips); None when it renders what was asked."""
    try:
        model = catalog.video_model(form.video_model or default_video_model)
        asked = int(form.duration.removesuffix("s"))
    except ValueError:
        return None
    made = catalog.effective_duration_s(model, asked)
    return None if made == asked else made


# ---------------------------------------------------------------------------------------------
# Batches


VARIATION_MODES: tuple[str, ...] = ("takes", "camera", "shot", "lighting", "mood")
_VARIED: dict[str, tuple[str, str]] = {
    "camera": ("Camera", "CAMERA_MOVEMENTS"),
    "shot": ("Shot", "SHOT_TYPES"),
    "lighting": ("Lighting", "LIGHTING"),
    "mood": ("Mood", "MOODS"),
}


def variations(
    base: FormFields, count: int, mode: str, builder: prompts.ShotChoices | None = None
) -> list[FormFields]:
    """`count` runs from one form. "takes" repeats the prompts (each run gets the provider's
    own random seed); the other modes give each run one builder option: it replaces the
    builder's own choice where the video prompt still holds it ("golden hour" becomes "blue
    hour"), and is appended to the prompt otherwise."""
    if not 1 <= count <= MAX_BATCH:
        raise RequestValidationError({"batch": f"must be between 1 and {MAX_BATCH} runs"})
    if mode not in VARIATION_MODES:
        raise RequestValidationError({"batch": f"unknown variation {mode!r}"})
    if count == 1 or mode == "takes":
        return [base] * count
    label, option_list = _VARIED[mode]
    options: Sequence[str] = getattr(prompts, option_list)
    chosen = getattr(builder, mode) if builder is not None else None
    return [
        replace(
            base, video_prompt=_varied(base.video_prompt, label, chosen, options[i % len(options)])
        )
        for i in range(count)
    ]


def _varied(prompt: str, label: str, chosen: str | None, option: str) -> str:
    found = re.search(re.escape(chosen), prompt, re.IGNORECASE) if chosen else None
    if found is None:
        return f"{prompt.strip().rstrip('.')}. {label}: {option}."
    # Keep the capital the builder gave the choice at the start of a sentence.
    text = option[:1].upper() + option[1:] if found.group()[:1].isupper() else option
    return prompt[: found.start()] + text + prompt[found.end() :]


def validate_all(variants: Sequence[FormFields]) -> list[WorkflowRequest]:
    """Parse every run of a batch before any starts; problems name the run in a batch."""
    requests, problems = [], {}
    for number, variant in enumerate(variants, start=1):
        try:
            requests.append(parse_request(variant.payload()))
        except RequestValidationError as exc:
            for field, message in exc.problems.items():
                suffix = f" (run {number} of the batch)" if len(variants) > 1 else ""
                problems.setdefault(field, message + suffix)
    if problems:
        raise RequestValidationError(problems)
    return requests


def estimate_cost(session: Session, form: FormFields) -> int | None:
    """Credits one run of this form costs, or None while its config is invalid. Prompts (and
    the webhook) don't change the price, so an unfinished prompt still gets an estimate."""
    placeholder = replace(form, image_prompt="x", video_prompt="x", project_id=None, webhook_url="")
    # The ledger prices runs by settings, not by model: models change the provider's bill only.
    try:
        request = parse_request(placeholder.payload())
    except RequestValidationError:
        return None
    return credits.cost_of(request, credits.load_costs(session))


@dataclass(frozen=True)
class StillReuse:
    """What reusing a still saves a start of the form (the create page's offer)."""

    source: str | None  # an earlier run whose still is reused; None: the batch's first run's
    saved: int  # credits the whole start saves


class StillFinder(Protocol):
    """What the offer needs of the engine (core.runtime.Runtime is one)."""

    db: Any

    def reuse_offer(self, user: UserView, request: WorkflowRequest) -> Any: ...


def still_reuse(
    finder: StillFinder, user: UserView, form: FormFields, count: int
) -> StillReuse | None:
    """The still a start of `count` runs of `form` would reuse: an earlier run's (every run
    saves its still), or, for a batch, its first run's (the others save theirs); None when
    nothing would be reused or the form is not valid yet. Batch variations differ only in the
    video prompt, so every run of a batch has the same image request."""
    try:
        request = parse_request(form.payload())
    except RequestValidationError:
        return None
    offer = finder.reuse_offer(user, request)
    if offer is not None:
        return StillReuse(offer.workflow_id, offer.credits * count)
    if count < 2:
        return None
    with finder.db.read() as session:
        each = credits.image_cost_of(request, credits.load_costs(session))
    return StillReuse(None, each * (count - 1))


def client_key_for(base: str, index: int, count: int) -> str:
    """One key per run of a batch, so a double click starts each run once."""
    return base if count == 1 else f"{base}-{index + 1}"


@dataclass(frozen=True)
class BatchOutcome:
    workflow_ids: tuple[str, ...]
    # Why the batch stopped early: the credits or a monthly budget ran out.
    shortfall: InsufficientCreditsError | BudgetExceededError | None = None


class WorkflowStarter(Protocol):
    """What a batch needs of the engine (core.runtime.Runtime is one)."""

    def start_workflow(
        self,
        user: UserView,
        request: WorkflowRequest,
        *,
        client_key: str | None = None,
        reuse_still: bool = False,
    ) -> tuple[str, bool]: ...


def start_batch(
    starter: WorkflowStarter,
    user: UserView,
    variants: Sequence[FormFields],
    client_key: str,
    *,
    reuse_still: bool = False,
) -> BatchOutcome:
    """Start every run, all parsed up front. Raises RequestValidationError (nothing started) or
    InsufficientCreditsError or BudgetExceededError when not even the first run could start.
    With `reuse_still`, runs that share an image request share one still: the first makes (or
    reuses) it, the rest reuse it."""
    requests = validate_all(variants)
    started: list[str] = []
    for index, request in enumerate(requests):
        try:
            workflow_id, _ = starter.start_workflow(
                user,
                request,
                client_key=client_key_for(client_key, index, len(requests)),
                reuse_still=reuse_still,
            )
        except (InsufficientCreditsError, BudgetExceededError) as exc:
            if not started:
                raise
            return BatchOutcome(tuple(started), shortfall=exc)
        started.append(workflow_id)
    return BatchOutcome(tuple(started))


def rerun_payload(request: WorkflowRequest, *, same_owner: bool) -> dict[str, Any]:
    """A finished run's request, to start again as is (Retry). Someone else's project and
    webhook (an admin retrying a user's run) are left out: the new run is the admin's own."""
    payload = request.to_json()
    if not same_owner:
        payload["projectId"] = None
        payload["webhookUrl"] = None  # their receiver trusts their secret, not the admin's
    return payload
