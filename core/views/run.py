"""One run as the watch page and the API read it: the run with its steps, and the files a
finished run left. (Its phase and receipt are in core.views.watch, its ETA in core.views.eta.)"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from core import workflows
from core.auth import UserView
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
