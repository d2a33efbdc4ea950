"""One run as the watch page and the API read it: the run with its steps, and the files a
finished run left. (Its phase and receipt are in core.views.watch, its ETA in core.views.eta;
`run_detail` gathers them all for the API's status.)"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from core import webhooks, workflows
from core.auth import UserView
from core.views.watch import LivePhase, Receipt, busy_slots, live_phase, receipt_for
from core.webhooks import DeliveryView
from core.workflows import AssetView, WorkflowView


@dataclass(frozen=True)
class RunResult:
    """The still and the clip of a finished run; either may be missing."""

    image: AssetView | None
    video: AssetView | None

    @property
    def is_empty(self) -> bool:
        return self.image is None and self.video is None


def load_run(session: Session, workflow_id: str, viewer: UserView) -> WorkflowView:
    """Raises NotFoundError for a missing run or someone else's (they look the same)."""
    return workflows.workflow_for(session, workflow_id, viewer)


def load_result(session: Session, workflow_id: str) -> RunResult:
    assets = workflows.assets_of(session, workflow_id)
    return RunResult(image=_first(assets, "image"), video=_first(assets, "video"))


def _first(assets: list[AssetView], kind: str) -> AssetView | None:
    return next((a for a in assets if a.kind == kind), None)


def download_name(asset: AssetView) -> str:
    extension = "mp4" if asset.kind == "video" else "png"
    return f"reelforge-{asset.workflow_id[:8]}-{asset.kind}.{extension}"


@dataclass(frozen=True)
class RunDetail:
    """Everything a status answer shows, read in one transaction."""

    view: WorkflowView
    phase: LivePhase
    receipt: Receipt | None
    assets: list[AssetView]
    deliveries: list[DeliveryView]


def run_detail(
    session: Session, workflow_id: str, viewer: UserView, *, max_active_per_user: int | None = None
) -> RunDetail:
    """Raises NotFoundError for a missing run or someone else's (they look the same).
    With `max_active_per_user`, a run waiting for one of its user's slots says so."""
    view = load_run(session, workflow_id, viewer)
    busy = busy_slots(session, view, max_active_per_user) if max_active_per_user else None
    return RunDetail(
        view=view,
        phase=live_phase(view, busy_slots=busy),
        receipt=receipt_for(session, view),
        assets=workflows.assets_of(session, workflow_id),
        deliveries=webhooks.deliveries_for(session, workflow_id, viewer),
    )


def run_deliveries(session: Session, workflow_id: str, viewer: UserView) -> list[DeliveryView]:
    """The webhook deliveries of a run the viewer may see (NotFoundError otherwise)."""
    load_run(session, workflow_id, viewer)
    return webhooks.deliveries_for(session, workflow_id, viewer)
