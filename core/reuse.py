"""Reusing a still already paid for instead of generating (and paying for) it again.

A run's image request is fingerprinted at start: SHA-256 of a canonical JSON of what the image
provider would receive (provider, model, the prompt as sent, style, quality, size). A later run
of the same user with the same fingerprint may take its still from an earlier run: one that
completed (so its credits were kept: the still was paid for), or, within a batch, one still in
flight that makes its own still. Projects belong to one user, so "the user's or their project's
stills" are the user's stills; another user's still is never reused.

The reservation at start covers the whole run, still included; the still's share comes back
(core.credits.release_reused_still) only once the reused still was read back from storage and
matched its checksum. A still that is gone or corrupt by then is generated afresh, already paid
for by that reservation: no run ever needs credits after its start, so nothing can overdraw and
a budget checked at start stays the only check.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from sqlalchemy import case, exists, select
from sqlalchemy.orm import Session

from core import prompts
from core.models import Asset, Workflow
from core.providers.base import ImageSpec
from core.schemas import WorkflowRequest
from core.states import WorkflowStatus

CACHE_PROVIDER = "cache"  # api_calls.provider of a reused still
REUSE_OPERATION = "reuse"
_IN_FLIGHT = (WorkflowStatus.QUEUED.value, WorkflowStatus.RUNNING.value)


def image_spec(request: WorkflowRequest, default_model: str) -> ImageSpec:
    """What generate_image asks the image model for (the fingerprint hashes exactly this)."""
    config = request.image_config
    return ImageSpec(
        prompt=prompts.first_frame_prompt(request.image_prompt, config.style),
        width=config.width,
        height=config.height,
        quality=config.quality,
        style=config.style,
        model=request.image_model or default_model,
    )


def fingerprint(provider: str, spec: ImageSpec) -> str:
    """SHA-256 of the image request as canonical JSON (sorted keys, no spaces, UTF-8)."""
    canonical = json.dumps(
        {
            "provider": provider,
            "model": spec.model,
            "prompt": spec.prompt,
            "style": spec.style,
            "quality": spec.quality,
            "size": f"{spec.width}x{spec.height}",
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def find_source(session: Session, user_id: int, image_fingerprint: str) -> str | None:
    """The run whose still a new run of `user_id` with this fingerprint should reuse: the
    newest completed run with a stored still, else the newest run in flight that makes its
    own (a batch's first run). One probe of ix_workflows_user_fingerprint."""
    completed = Workflow.status == WorkflowStatus.COMPLETED.value
    has_still = exists().where(Asset.workflow_id == Workflow.id, Asset.kind == "image")
    making_own = Workflow.status.in_(_IN_FLIGHT) & Workflow.reuse_image_from.is_(None)
    return session.execute(
        select(Workflow.id)
        .where(
            Workflow.user_id == user_id,
            Workflow.image_fingerprint == image_fingerprint,
            (completed & has_still) | making_own,
        )
        .order_by(case((completed, 0), else_=1), Workflow.created_at.desc())
        .limit(1)
    ).scalar()


@dataclass(frozen=True)
class StoredStill:
    storage_key: str
    content_type: str
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class StillSource:
    """A source run as a reusing run finds it when its generate_image step runs."""

    workflow_id: str
    status: WorkflowStatus
    still: StoredStill | None  # None until the source's upload_image completed

    @property
    def may_still_come(self) -> bool:
        return self.still is None and self.status.is_active


def source_still(session: Session, workflow_id: str) -> StillSource:
    status = session.execute(select(Workflow.status).where(Workflow.id == workflow_id)).scalar_one()
    row = session.execute(
        select(Asset.storage_key, Asset.content_type, Asset.size_bytes, Asset.sha256).where(
            Asset.workflow_id == workflow_id, Asset.kind == "image"
        )
    ).first()
    still = None if row is None else StoredStill(*row)
    return StillSource(workflow_id, WorkflowStatus(status), still)


@dataclass(frozen=True)
class ReuseOffer:
    """What the create page offers: the still of `workflow_id`, saving `credits` per run."""

    workflow_id: str
    credits: int
