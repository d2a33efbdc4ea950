"""The six steps, what each does, and the pure decision of what a workflow does next.

Three names to tell apart: `next_action` decides, from a snapshot, a `NextStep` (run this step)
or an `EndRun`; the orchestrator carries that out as a `StepExecution` (core.step_execution, one
execution of one step); and the step function sees that execution only as its `StepContext`
(provider calls with retries and records, throttled progress, cancel/deadline checks, asset rows).
A step returns its output dict, which is persisted on the step row so a resumed run skips it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal, Protocol, TypeVar

from core import media, prompts, reuse
from core.config import Settings
from core.errors import (
    FailureCategory,
    PermanentProviderError,
    StepFailedError,
    StepTimeoutError,
    WorkflowCancelledError,
)
from core.progress import VideoJobProgress
from core.providers import catalog
from core.providers.base import ImageSpec, Providers, VideoJobState, VideoSpec
from core.providers.download import fetch_bytes
from core.schemas import WorkflowRequest
from core.states import StepName, StepStatus, WorkflowStatus
from core.workflows import StepView, WorkflowView

T = TypeVar("T")
log = logging.getLogger(__name__)

# Finished files may differ from the asked duration by a frame or two of container rounding.
DURATION_TOLERANCE_S = 0.25


class StepContext(Protocol):
    """What a step function may do; a StepExecution implements it (fakes in tests do too)."""

    workflow: WorkflowView
    step: StepView
    providers: Providers
    settings: Settings

    @property
    def remaining_s(self) -> float: ...

    def report(self, progress: int, message: str, detail: VideoJobProgress | None = None) -> None:
        """Progress for the live page (throttled; the last report before a write is kept)."""

    def check(self) -> None:
        """Raise if the user cancelled, the step's deadline passed, or the runner is stopping."""

    def wait(self, seconds: float) -> None:
        """Sleep between polls; wakes early when the runner is stopping."""

    def call(
        self,
        operation: str,
        fn: Callable[[], T],
        *,
        provider: str,
        cost_usd: Decimal = Decimal(0),
        retry: bool = True,
    ) -> T:
        """Call a provider with the retry policy; every attempt becomes an api_calls row."""
        ...

    def save_provider_request_id(self, request_id: str) -> None:
        """Persist a paid job's id before waiting on it (write-ahead)."""

    def add_asset(self, **fields: Any) -> None:
        """Record an asset row (written with the step's completion)."""

    def output_of(self, step: StepName) -> dict[str, Any]: ...

    def source_still(self, workflow_id: str) -> reuse.StillSource:
        """The run whose still this one reuses, as it stands now."""
        ...

    def mark_still_reused(self, source_id: str) -> None:
        """The step copied `source_id`'s still: its credits come back (exactly once) before
        the step's completion is written."""


# ---------------------------------------------------------------------------------------------
# What next (pure)


@dataclass(frozen=True)
class NextStep:
    """Decided: run this step (start it, or resume it when it was processing)."""

    step: StepName


@dataclass(frozen=True)
class EndRun:
    """Decided, or reported by a step execution: end the run this way."""

    status: WorkflowStatus
    message: str = ""
    category: FailureCategory | None = None
    provider_cancel_confirmed: bool | None = None  # a stopped video job: the provider's answer


def next_action(view: WorkflowView, *, max_recoveries: int) -> NextStep | EndRun | None:
    """What a runner holding `view` should do next; None when the run is over."""
    if view.status.is_terminal:
        return None
    if view.cancel_requested:
        return EndRun(WorkflowStatus.CANCELLED, "cancelled by the user")
    if view.recoveries > max_recoveries:
        return EndRun(
            WorkflowStatus.FAILED,
            f"gave up after {view.recoveries} restarts of an interrupted run",
            FailureCategory.STALE,
        )
    for step in view.steps:
        if step.status.is_done:
            continue
        if step.status in (StepStatus.PENDING, StepStatus.PROCESSING):
            return NextStep(step.name)
        # A failed or cancelled step under a live workflow: end the run the same way.
        ended = WorkflowStatus.CANCELLED if step.status is StepStatus.CANCELLED else None
        return EndRun(ended or WorkflowStatus.FAILED, step.error_message or f"{step.name} failed")
    return EndRun(WorkflowStatus.COMPLETED)


# ---------------------------------------------------------------------------------------------
# What a real provider will charge and deliver (catalog), or what the offline one does


@dataclass(frozen=True)
class ClipExpectation:
    duration_s: int
    dimensions: tuple[int, int] | None  # None: the model picks its own resolution
    list_price: Decimal


def _offline(provider_name: str) -> bool:
    return provider_name == "offline"


def image_list_price(provider_name: str, spec: ImageSpec) -> Decimal:
    """The list price of one image at the size the model will really make (catalog)."""
    if _offline(provider_name):
        return Decimal(0)
    try:
        mapped = catalog.image_request(spec)
        usd = catalog.estimate_image_usd(spec.model, spec.quality, mapped.width, mapped.height)
    except ValueError:  # an unknown model: the provider call will say so itself
        return Decimal(0)
    return Decimal(str(usd))


def expected_clip(provider_name: str, request: WorkflowRequest, model: str) -> ClipExpectation:
    """The clip a video provider will deliver for `request` on `model`. Offline renders exactly
    what was asked; a fal model snaps the duration to what it offers and may not take a
    resolution at all."""
    config = request.video_config
    if _offline(provider_name):
        return ClipExpectation(config.duration_s, request.video_dimensions, Decimal(0))
    try:
        known = catalog.video_model(model)
    except ValueError:
        return ClipExpectation(config.duration_s, None, Decimal(0))
    usd = catalog.estimate_video_usd(
        model, config.duration_s, config.resolution, config.generate_audio
    )
    return ClipExpectation(
        duration_s=catalog.effective_duration_s(known, config.duration_s),
        dimensions=request.video_dimensions if config.resolution in known.resolutions else None,
        list_price=Decimal(str(usd)),
    )


# ---------------------------------------------------------------------------------------------
# The steps


def storage_key(view: WorkflowView, name: str) -> str:
    """Layout: users/<user>/workflows/<workflow>/<name>."""
    return f"users/{view.user_id}/workflows/{view.id}/{name}"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# hashlib lets go of the GIL while it hashes a large buffer, so a file's checksum can be computed
# on another core while the run's thread is in a provider call (a store, a read-back): about
# 0.6 ms a megapixel PNG that no longer adds to the step. Shared by the process's runs.
_CHECKSUMS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="reelforge-sha256")


def sha256_meanwhile(data: bytes) -> Future[str]:
    """`data`'s SHA-256, computed beside the caller, who collects it with `.result()`."""
    return _CHECKSUMS.submit(sha256, data)


def validate(ctx: StepContext) -> dict[str, Any]:
    """Moderate both prompts in one call; a flagged prompt ends the run (and refunds it)."""
    request = ctx.workflow.request
    moderator = ctx.providers.moderator
    ctx.report(20, "checking both prompts")
    verdicts = ctx.call(
        "moderate",
        lambda: moderator.moderate([request.image_prompt, request.video_prompt]),
        provider=moderator.name,
    )
    flagged = {
        field: verdict.categories
        for field, verdict in zip(("imagePrompt", "videoPrompt"), verdicts, strict=True)
        if verdict.flagged
    }
    if flagged:
        named = "; ".join(
            f"{f} flagged for {', '.join(c) or 'unsafe content'}" for f, c in flagged.items()
        )
        raise StepFailedError(
            f"Moderation refused the request: {named}", FailureCategory.MODERATION
        )
    return {"moderation": {"provider": moderator.name, "flagged": False}}


def generate_image(ctx: StepContext) -> dict[str, Any]:
    """Ask the image model for the first frame and park the bytes in storage (no second bill).
    A run started to reuse another run's still copies that still instead, when it is still
    stored intact; otherwise it generates one, already paid for by its reservation."""
    request, providers = ctx.workflow.request, ctx.providers
    spec = reuse.image_spec(request, ctx.settings.image_model)
    source = ctx.workflow.reuse_image_from
    reused = _reuse_still(ctx, source, spec) if source else None
    if reused is not None:
        return reused
    ctx.report(10, f"generating a {request.image_config.size} image")
    image = ctx.call(
        "generate",
        lambda: providers.image.generate(spec, timeout_s=max(1.0, ctx.remaining_s)),
        provider=providers.image.name,
        cost_usd=image_list_price(providers.image.name, spec),
    )
    return {
        **_stage_image(ctx, image.data, image.content_type),
        "model": image.model,
        "prompt_sent": spec.prompt,
        "revised_prompt": image.revised_prompt,
    }


def _stage_image(ctx: StepContext, data: bytes, content_type: str) -> dict[str, Any]:
    """Check the still decodes, and park it under the run's staging key (upload_image stores
    it for good with a copy inside storage); its checksum and size are taken here, once."""
    probe = _probe_still(data)
    storage, key = ctx.providers.storage, storage_key(ctx.workflow, "staging/image.png")
    ctx.report(80, "keeping the image")
    checksum = sha256_meanwhile(data)
    ctx.call("put", lambda: storage.put(key, data, content_type), provider=storage.name)
    return {
        "staging_key": key,
        "content_type": content_type,
        "size_bytes": len(data),
        "sha256": checksum.result(),
        "width": probe.width,
        "height": probe.height,
    }


def _probe_still(data: bytes) -> media.ImageProbe:
    return _probed(media.probe_image, data, "The image model returned an unreadable image")


def _probed(probe: Callable[[bytes], T], data: bytes, unreadable: str) -> T:
    """`probe(data)`; a file that does not decode fails the step's verification."""
    try:
        return probe(data)
    except ValueError as exc:
        raise StepFailedError(f"{unreadable}: {exc}", FailureCategory.VERIFICATION) from exc


def _reuse_still(ctx: StepContext, source_id: str, spec: ImageSpec) -> dict[str, Any] | None:
    """Copy the source run's still into this run, recorded as a free "reuse" call, or None
    when it is gone, corrupt, or never came (the source failed first or took too long).

    A source still in flight (a batch's first run) is waited for, for at most half of this
    step's budget: the other half is left for generating the still after all.
    """
    give_up_below_s = ctx.settings.step_timeout_s(StepName.GENERATE_IMAGE) / 2
    found = ctx.source_still(source_id)
    while found.may_still_come and ctx.remaining_s > give_up_below_s:
        ctx.report(5, f"waiting for the still of run {source_id}")
        ctx.wait(ctx.settings.poll_interval_s)
        ctx.check()
        found = ctx.source_still(source_id)
    still = found.still
    data = None if still is None else _intact(ctx, still)
    if still is None or data is None:
        why = "is no longer stored intact" if still else "never came"
        log.warning("Workflow %s: the still of run %s %s", ctx.workflow.id, source_id, why)
        ctx.report(8, f"the still of run {source_id} {why}; generating a fresh one")
        return None
    ctx.call(reuse.REUSE_OPERATION, lambda: data, provider=reuse.CACHE_PROVIDER)
    output = _stage_image(ctx, data, still.content_type)
    ctx.mark_still_reused(source_id)
    return {
        **output,
        "model": spec.model,
        "prompt_sent": spec.prompt,
        "revised_prompt": None,
        "reused_from": source_id,
    }


def _intact(ctx: StepContext, still: reuse.StoredStill) -> bytes | None:
    """The stored still's bytes when they exist and match their size and checksum."""
    storage, key = ctx.providers.storage, still.storage_key
    found = ctx.call("head", lambda: storage.head(key), provider=storage.name)
    if found is None or found.size != still.size_bytes:
        return None
    data = ctx.call("get", lambda: storage.get(key), provider=storage.name)
    return data if sha256(data) == still.sha256 else None


def upload_image(ctx: StepContext) -> dict[str, Any]:
    """Store the staged still under its final key, a copy inside storage (on S3 the bytes
    never leave it), and record the asset; finalize reads it back against the checksum
    generate_image took."""
    staged = ctx.output_of(StepName.GENERATE_IMAGE)
    storage, key = ctx.providers.storage, storage_key(ctx.workflow, "image.png")
    if "sha256" not in staged:  # staged by a version that checked the still here instead
        data = ctx.call("get", lambda: storage.get(staged["staging_key"]), provider=storage.name)
        probe = _probe_still(data)
        staged = {**staged, "sha256": sha256(data), "width": probe.width, "height": probe.height}
    ctx.report(50, "storing the image")
    ctx.call("copy", lambda: storage.copy(staged["staging_key"], key), provider=storage.name)
    return _record_asset(
        ctx,
        "image",
        key,
        staged["content_type"],
        staged["sha256"],
        staged["size_bytes"],
        width=staged["width"],
        height=staged["height"],
    )


def generate_video(ctx: StepContext) -> dict[str, Any]:
    """Submit the image to the video queue (or reattach to the job a previous run paid for),
    poll until done, and cancel at the provider if the user cancels or the budget runs out."""
    video = ctx.providers.video
    request_id = ctx.step.provider_request_id
    if request_id is None:
        request_id = _submit_video(ctx)
    else:
        ctx.report(5, f"reattached to provider job {request_id}", VideoJobProgress(request_id))
    try:
        _poll_until_done(ctx, request_id)
    except (WorkflowCancelledError, StepTimeoutError) as stop:
        confirmed = ctx.call(
            "cancel", lambda: video.cancel(request_id), provider=video.name, retry=False
        )
        verdict = "confirmed" if confirmed else "did not confirm"
        raise type(stop)(
            f"{stop}; the provider {verdict} the cancellation",
            provider_cancel_confirmed=bool(confirmed),
        ) from stop
    request, model = ctx.workflow.request, _video_model(ctx)
    clip = expected_clip(video.name, request, model)
    result = ctx.call(
        "result", lambda: video.result(request_id), provider=video.name, cost_usd=clip.list_price
    )
    return {
        "request_id": request_id,
        "video_url": result.url,
        "content_type": result.content_type,
        "prompt_sent": prompts.motion_prompt(request.video_prompt),
        "model": model,
        "expected": {"duration_s": clip.duration_s, "dimensions": clip.dimensions},
    }


def _video_model(ctx: StepContext) -> str:
    return ctx.workflow.request.video_model or ctx.settings.video_model


def _submit_video(ctx: StepContext) -> str:
    providers, request = ctx.providers, ctx.workflow.request
    image_key = ctx.output_of(StepName.UPLOAD_IMAGE)["storage_key"]
    spec = VideoSpec(
        prompt=prompts.motion_prompt(request.video_prompt),
        image_url=providers.storage.url(image_key, expires_s=ctx.settings.presign_expiry_s),
        duration_s=request.video_config.duration_s,
        resolution=request.video_config.resolution,
        aspect_ratio=request.aspect_ratio,
        generate_audio=request.video_config.generate_audio,
        model=_video_model(ctx),
        seed=request.video_config.seed,
    )
    ctx.report(2, "submitting to the video queue")
    request_id = ctx.call(
        "submit", lambda: providers.video.submit(spec), provider=providers.video.name
    )
    ctx.save_provider_request_id(request_id)
    return request_id


def _poll_until_done(ctx: StepContext, request_id: str) -> None:
    video = ctx.providers.video
    while True:
        ctx.check()
        status = ctx.call("status", lambda: video.status(request_id), provider=video.name)
        queued = status.state is VideoJobState.QUEUED
        detail = VideoJobProgress(
            request_id, status.state, status.queue_position if queued else None
        )
        if status.state is VideoJobState.COMPLETED:
            ctx.report(95, "video ready, fetching it", detail)
            return
        if status.state is VideoJobState.FAILED:
            raise PermanentProviderError(
                f"The video provider failed the job: {status.error or 'no reason given'}",
                provider=video.name,
                category=status.error_category,
            )
        if queued:
            ctx.report(5, f"in the provider's queue (position {status.queue_position})", detail)
        else:
            fraction = status.progress if status.progress is not None else 0.0
            message = status.logs[-1] if status.logs else "generating the video"
            ctx.report(10 + round(85 * fraction), message, detail)
        ctx.wait(ctx.settings.poll_interval_s)


def upload_video(ctx: StepContext) -> dict[str, Any]:
    """Download the clip from the provider, check it decodes, store it and record the asset."""
    made = ctx.output_of(StepName.GENERATE_VIDEO)
    settings = ctx.settings
    ctx.report(10, "downloading the video")
    data = ctx.call(
        "download",
        lambda: fetch_bytes(
            made["video_url"],
            timeout_s=max(1.0, ctx.remaining_s),
            allowed_roots=(settings.offline_provider_dir, settings.resolved_storage_dir),
        ),
        provider=ctx.providers.video.name,
    )
    probe = _probe_video(data)
    ctx.report(60, "storing the video")
    stored = _store(
        ctx,
        "video",
        "video.mp4",
        data,
        made["content_type"],
        width=probe.width,
        height=probe.height,
        duration_s=probe.duration_s,
    )
    return {**stored, "has_audio": probe.has_audio}


def _store(
    ctx: StepContext, kind: str, name: str, data: bytes, content_type: str, **dimensions: Any
) -> dict[str, Any]:
    """Put a finished file under its final key and record its asset row; returns the step output
    that finalize checks it against."""
    storage, key = ctx.providers.storage, storage_key(ctx.workflow, name)
    checksum = sha256_meanwhile(data)
    ctx.call("put", lambda: storage.put(key, data, content_type), provider=storage.name)
    return _record_asset(ctx, kind, key, content_type, checksum.result(), len(data), **dimensions)


def _record_asset(
    ctx: StepContext,
    kind: str,
    key: str,
    content_type: str,
    digest: str,
    size: int,
    **dimensions: Any,
) -> dict[str, Any]:
    """Record a stored file's asset row; returns the step output finalize checks it against."""
    ctx.add_asset(
        kind=kind,
        storage_key=key,
        content_type=content_type,
        size_bytes=size,
        sha256=digest,
        **dimensions,
    )
    return {"storage_key": key, "sha256": digest, "size_bytes": size, **dimensions}


def _probe_video(data: bytes) -> media.VideoProbe:
    return _probed(media.probe_video, data, "The video provider returned an unreadable file")


def finalize(ctx: StepContext) -> dict[str, Any]:
    """No false done: read both stored files back (exist, size, checksum) and check the clip's
    probed resolution and duration before calling the run complete. A matching checksum means
    the stored bytes are the very ones upload_video decoded, so they are not decoded again.
    The credits reserved at start are simply kept: there is nothing to settle."""
    storage = ctx.providers.storage
    image = ctx.output_of(StepName.UPLOAD_IMAGE)
    video = ctx.output_of(StepName.UPLOAD_VIDEO)
    ctx.report(20, "reading back the stored image")
    image_checksum = sha256_meanwhile(_read_back(ctx, image))
    ctx.report(50, "reading back the stored video")
    video_checksum = sha256_meanwhile(_read_back(ctx, video))
    _check_checksum(image, image_checksum.result())
    _check_checksum(video, video_checksum.result())
    _check_clip(ctx.output_of(StepName.GENERATE_VIDEO)["expected"], video)
    # The staged copy goes only now: until upload_image is committed, a resumed run needs it.
    staged = ctx.output_of(StepName.GENERATE_IMAGE)["staging_key"]
    ctx.call("delete", lambda: storage.delete(staged), provider=storage.name)
    # Webhooks leave through the outbox, written with the run's completion (core.webhooks):
    # the run's success never waits on a receiver.
    return {
        "verified": {"image_sha256": image["sha256"], "video_sha256": video["sha256"]},
        "storage": storage.name,
    }


def _check_clip(expected: dict[str, Any], video: dict[str, Any]) -> None:
    dimensions = expected["dimensions"]
    if dimensions is not None and [video["width"], video["height"]] != list(dimensions):
        want_w, want_h = dimensions
        raise StepFailedError(
            f"The video is {video['width']}x{video['height']}, not the {want_w}x{want_h} asked for",
            FailureCategory.VERIFICATION,
        )
    wanted_s = expected["duration_s"]
    if abs(video["duration_s"] - wanted_s) > DURATION_TOLERANCE_S:
        raise StepFailedError(
            f"The video lasts {video['duration_s']:.2f} s, not the {wanted_s} s asked for",
            FailureCategory.VERIFICATION,
        )


def _read_back(ctx: StepContext, uploaded: dict[str, Any]) -> bytes:
    """The stored file's bytes, when it exists with the size it was stored with."""
    storage, key = ctx.providers.storage, uploaded["storage_key"]
    found = ctx.call("head", lambda: storage.head(key), provider=storage.name)
    if found is None or found.size != uploaded["size_bytes"]:
        raise StepFailedError(
            f"Stored file {key} is missing or has the wrong size", FailureCategory.VERIFICATION
        )
    return ctx.call("get", lambda: storage.get(key), provider=storage.name)


def _check_checksum(uploaded: dict[str, Any], read_back: str) -> None:
    if read_back != uploaded["sha256"]:
        raise StepFailedError(
            f"Stored file {uploaded['storage_key']} does not match its checksum",
            FailureCategory.VERIFICATION,
        )


StepFunction = Callable[[StepContext], dict[str, Any]]

Capability = Literal["moderator", "image", "video", "storage"]

# The provider calls each step makes when all goes well, in order, as api_calls records them:
# (the capability whose provider is called, the operation). "status" repeats until the video
# job is done. Tests hold the step functions
# to this list, and the demo history is written from it.
STEP_CALLS: dict[StepName, tuple[tuple[Capability, str], ...]] = {
    StepName.VALIDATE: (("moderator", "moderate"),),
    StepName.GENERATE_IMAGE: (("image", "generate"), ("storage", "put")),
    StepName.UPLOAD_IMAGE: (("storage", "copy"),),
    StepName.GENERATE_VIDEO: (("video", "submit"), ("video", "status"), ("video", "result")),
    StepName.UPLOAD_VIDEO: (("video", "download"), ("storage", "put")),
    StepName.FINALIZE: (
        *(("storage", "head"), ("storage", "get")),  # the image read back
        *(("storage", "head"), ("storage", "get")),  # the video read back
        ("storage", "delete"),  # the staged image
    ),
}

STEPS: dict[StepName, StepFunction] = {
    StepName.VALIDATE: validate,
    StepName.GENERATE_IMAGE: generate_image,
    StepName.UPLOAD_IMAGE: upload_image,
    StepName.GENERATE_VIDEO: generate_video,
    StepName.UPLOAD_VIDEO: upload_video,
    StepName.FINALIZE: finalize,
}
