"""What the watch page reads beyond the raw workflow view: the phase a run is in right now (the
provider's queue kept apart from generating and uploading), the receipt of a run that ended
failed or cancelled, and the still a run reused instead of paying for it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy.orm import Session

from core import credits, liveness
from core.credits import LedgerEntry
from core.progress import VideoJobProgress
from core.providers.base import VideoJobState
from core.states import StepName, StepStatus, WorkflowStatus
from core.workflows import WorkflowView


class Phase(StrEnum):
    WAITING = "waiting"  # queued here, no worker free yet
    MODERATING = "moderating"
    GENERATING_IMAGE = "generating_image"
    STORING_IMAGE = "storing_image"
    SUBMITTING = "submitting"
    PROVIDER_QUEUE = "provider_queue"  # waiting in the video provider's own queue
    GENERATING_VIDEO = "generating_video"
    UPLOADING_VIDEO = "uploading_video"
    FINALIZING = "finalizing"
    CANCELLING = "cancelling"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class LivePhase:
    phase: Phase
    label: str
    queue_position: int | None = None


_STEP_PHASES: dict[StepName, tuple[Phase, str]] = {
    StepName.VALIDATE: (Phase.MODERATING, "Checking both prompts"),
    StepName.GENERATE_IMAGE: (Phase.GENERATING_IMAGE, "Generating the first frame"),
    StepName.UPLOAD_IMAGE: (Phase.STORING_IMAGE, "Storing the image"),
    StepName.UPLOAD_VIDEO: (Phase.UPLOADING_VIDEO, "Uploading the video"),
    StepName.FINALIZE: (Phase.FINALIZING, "Verifying the files and finishing"),
}


def live_phase(view: WorkflowView, *, busy_slots: int | None = None) -> LivePhase:
    """`busy_slots`: how many of the user's runs are running while this one waits for a slot
    (see `busy_slots`), None when it waits for nothing but a free worker."""
    if view.status is WorkflowStatus.COMPLETED:
        return LivePhase(Phase.COMPLETED, "Finished")
    if view.status is WorkflowStatus.FAILED:
        return LivePhase(Phase.FAILED, "Failed")
    if view.status is WorkflowStatus.CANCELLED:
        return LivePhase(Phase.CANCELLED, "Cancelled")
    if view.cancel_requested:
        return LivePhase(Phase.CANCELLING, "Cancelling: stopping at the next check")
    if view.status is WorkflowStatus.QUEUED:
        if busy_slots is not None:
            runs = "run is" if busy_slots == 1 else "runs are"
            return LivePhase(Phase.WAITING, f"waiting: {busy_slots} of your {runs} already running")
        return LivePhase(Phase.WAITING, "Waiting for a free worker")
    step = next((s for s in view.steps if not s.status.is_done), None)
    if step is None:
        return LivePhase(Phase.FINALIZING, "Finishing")
    if step.name is not StepName.GENERATE_VIDEO:
        phase, label = _STEP_PHASES[step.name]
        return LivePhase(phase, label)
    job = VideoJobProgress.from_output(step.output)
    if job.phase is VideoJobState.QUEUED:
        position = job.queue_position
        if position is None:
            where = "position unknown"
        else:  # the provider's count of jobs ahead: 0 means next in line
            where = "next in line" if position == 0 else f"{position} ahead"
        return LivePhase(Phase.PROVIDER_QUEUE, f"In the video provider's queue ({where})", position)
    if job.phase is VideoJobState.IN_PROGRESS:
        return LivePhase(Phase.GENERATING_VIDEO, "The provider is generating the video")
    if job.phase is VideoJobState.COMPLETED:
        return LivePhase(Phase.GENERATING_VIDEO, "Video ready at the provider, fetching it")
    return LivePhase(Phase.SUBMITTING, "Submitting to the video provider")


def busy_slots(session: Session, view: WorkflowView, limit: int) -> int | None:
    """The number of the user's running runs when a queued run waits because of them
    (MAX_ACTIVE_RUNS_PER_USER), else None."""
    if view.status is not WorkflowStatus.QUEUED:
        return None
    running = liveness.running_count(session, view.user_id)
    return running if running >= limit else None


@dataclass(frozen=True)
class StillReused:
    """A run that took its still from an earlier run, and the credits that gave back."""

    source_id: str
    saved: int
    entry: LedgerEntry


def still_reused(session: Session, view: WorkflowView) -> StillReused | None:
    """None unless the run really reused a still (not while it waits for one, nor when it
    generated its own after all)."""
    if view.reuse_image_from is None:
        return None
    entry = credits.release_entry(session, view.id)
    return None if entry is None else StillReused(view.reuse_image_from, entry.amount, entry)


@dataclass(frozen=True)
class Receipt:
    """Why a run ended without a video, and what came back to the user's balance."""

    status: WorkflowStatus
    reason: str
    step: StepName | None  # the step that failed or was stopped; None if none had started
    category: str | None
    refunded: int
    entry: LedgerEntry | None
    provider_cancel: bool | None  # True/False: the provider did/didn't confirm; None: not asked
    still_reused: StillReused | None = None


def receipt_for(session: Session, view: WorkflowView) -> Receipt | None:
    if view.status not in (WorkflowStatus.FAILED, WorkflowStatus.CANCELLED):
        return None
    ended = next(
        (s for s in view.steps if s.status in (StepStatus.FAILED, StepStatus.CANCELLED)), None
    )
    entry = credits.refund_entry(session, view.id)
    reason = view.error_message or (ended.error_message if ended else None) or ""
    if not reason and view.status is WorkflowStatus.CANCELLED:
        reason = "cancelled by the user"
    return Receipt(
        status=view.status,
        reason=reason,
        step=ended.name if ended and ended.status is not StepStatus.SKIPPED else None,
        category=view.error_category or (ended.error_category if ended else None),
        refunded=entry.amount if entry else 0,
        entry=entry,
        provider_cancel=view.provider_cancel_confirmed,
        still_reused=still_reused(session, view),
    )
