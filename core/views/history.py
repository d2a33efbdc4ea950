"""The history and gallery queries: a viewer's runs (everyone's for an admin who asks), filtered,
searched and paged, and the finished runs with their image and video."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy import Select, and_, func, or_, select
from sqlalchemy.orm import Session

from core.auth import UserView
from core.models import Asset, Project, User, Workflow, view_of
from core.states import WorkflowStatus
from core.workflows import AssetView, elapsed_s

SEARCH_MAX_CHARS = 200


@dataclass(frozen=True)
class RunRow:
    """One workflow as the history and gallery list it (no steps)."""

    id: str
    user_id: int
    owner_email: str
    project_id: int | None
    project_name: str | None
    status: WorkflowStatus
    image_prompt: str
    video_prompt: str
    cost_credits: int
    error_message: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def duration_s(self) -> float | None:
        return elapsed_s(self.started_at, self.finished_at)


@dataclass(frozen=True)
class RunFilter:
    statuses: tuple[WorkflowStatus, ...] = ()
    project_id: int | None = None
    project_name: str | None = None  # as the owner named it, any case
    search: str = ""  # words in either prompt, or the start of a run id
    since: datetime | None = None  # created at or after
    until: datetime | None = None  # created before
    everyone: bool = False  # admins only: every user's runs
    owner_id: int | None = None  # admins only, with everyone: this user's runs
    batch: str | None = None  # the client key a batch was started with
    ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunPage:
    rows: list[RunRow]
    total: int


@dataclass(frozen=True)
class GalleryItem:
    run: RunRow
    image: AssetView | None
    video: AssetView | None


def _base() -> Select:
    return (
        select(
            Workflow.id,
            Workflow.user_id,
            User.email.label("owner_email"),
            Workflow.project_id,
            Project.name.label("project_name"),
            Workflow.status,
            Workflow.image_prompt,
            Workflow.video_prompt,
            Workflow.cost_credits,
            Workflow.error_message,
            Workflow.created_at,
            Workflow.started_at,
            Workflow.finished_at,
        )
        .join(User, User.id == Workflow.user_id)
        .outerjoin(Project, Project.id == Workflow.project_id)
    )


def _filtered(query: Select, viewer: UserView, flt: RunFilter) -> Select:
    if not (flt.everyone and viewer.is_admin):
        query = query.where(Workflow.user_id == viewer.id)
    elif flt.owner_id is not None:
        query = query.where(Workflow.user_id == flt.owner_id)
    if flt.statuses:
        query = query.where(Workflow.status.in_([s.value for s in flt.statuses]))
    if flt.project_id is not None:
        query = query.where(Workflow.project_id == flt.project_id)
    if flt.project_name is not None:
        named = select(Project.id).where(
            func.lower(Project.name) == flt.project_name.strip().lower()
        )
        query = query.where(Workflow.project_id.in_(named))
    if flt.since is not None:
        query = query.where(Workflow.created_at >= flt.since)
    if flt.until is not None:
        query = query.where(Workflow.created_at < flt.until)
    if flt.batch:
        query = query.where(
            or_(Workflow.client_key == flt.batch, Workflow.client_key.startswith(f"{flt.batch}-"))
        )
    if flt.ids:
        query = query.where(Workflow.id.in_(flt.ids))
    for word in flt.search[:SEARCH_MAX_CHARS].split():
        query = query.where(
            or_(
                Workflow.image_prompt.icontains(word, autoescape=True),
                Workflow.video_prompt.icontains(word, autoescape=True),
                Workflow.id.startswith(word.lower(), autoescape=True),
            )
        )
    return query


def _row(r) -> RunRow:
    return RunRow(
        id=r.id,
        user_id=r.user_id,
        owner_email=r.owner_email,
        project_id=r.project_id,
        project_name=r.project_name,
        status=WorkflowStatus(r.status),
        image_prompt=r.image_prompt,
        video_prompt=r.video_prompt,
        cost_credits=r.cost_credits,
        error_message=r.error_message,
        created_at=r.created_at,
        started_at=r.started_at,
        finished_at=r.finished_at,
    )


def _count(session: Session, query: Select) -> int:
    return session.execute(select(func.count()).select_from(query.subquery())).scalar_one()


def list_runs(
    session: Session, viewer: UserView, flt: RunFilter, *, limit: int = 25, offset: int = 0
) -> RunPage:
    """Newest first."""
    query = _filtered(_base(), viewer, flt)
    rows = session.execute(
        query.order_by(Workflow.created_at.desc(), Workflow.id).limit(limit).offset(offset)
    )
    return RunPage([_row(r) for r in rows], _count(session, query))


@dataclass(frozen=True)
class RunCursor:
    """Where a page of runs ended: the last run a client was shown."""

    created_at: datetime
    id: str


def runs_after(
    session: Session, viewer: UserView, flt: RunFilter, *, limit: int, after: RunCursor | None
) -> list[RunRow]:
    """Newest first, as list_runs, but continuing after a cursor instead of an offset, so a
    page never repeats or skips a run when new ones start meanwhile (the API's list)."""
    query = _filtered(_base(), viewer, flt)
    if after is not None:
        query = query.where(
            or_(
                Workflow.created_at < after.created_at,
                and_(Workflow.created_at == after.created_at, Workflow.id > after.id),
            )
        )
    rows = session.execute(query.order_by(Workflow.created_at.desc(), Workflow.id).limit(limit))
    return [_row(r) for r in rows]


def status_counts(session: Session, viewer: UserView, flt: RunFilter) -> dict[WorkflowStatus, int]:
    """How many of the filtered runs are in each state (the filter's own statuses ignored)."""
    inner = _filtered(select(Workflow.status), viewer, replace(flt, statuses=())).subquery()
    rows = session.execute(select(inner.c.status, func.count()).group_by(inner.c.status))
    counts = dict.fromkeys(WorkflowStatus, 0)
    for status, count in rows:
        counts[WorkflowStatus(status)] = count
    return counts


def active_runs(session: Session, viewer: UserView, *, limit: int = 10) -> list[RunRow]:
    """The viewer's queued and running workflows, oldest first."""
    flt = RunFilter(statuses=(WorkflowStatus.QUEUED, WorkflowStatus.RUNNING))
    query = _filtered(_base(), viewer, flt).order_by(Workflow.created_at).limit(limit)
    return [_row(r) for r in session.execute(query)]


def gallery(
    session: Session, viewer: UserView, flt: RunFilter, *, limit: int = 12, offset: int = 0
) -> tuple[list[GalleryItem], int]:
    """Finished runs, newest first, each with its stored image and video."""
    only_done = RunFilter(
        statuses=(WorkflowStatus.COMPLETED,),
        project_id=flt.project_id,
        search=flt.search,
        since=flt.since,
        everyone=flt.everyone,
    )
    page = list_runs(session, viewer, only_done, limit=limit, offset=offset)
    assets: dict[str, dict[str, AssetView]] = defaultdict(dict)
    if page.rows:
        rows = session.execute(
            select(Asset).where(Asset.workflow_id.in_([r.id for r in page.rows]))
        ).scalars()
        for asset in rows:
            assets[asset.workflow_id][asset.kind] = view_of(AssetView, asset)
    items = [
        GalleryItem(run=r, image=assets[r.id].get("image"), video=assets[r.id].get("video"))
        for r in page.rows
    ]
    return items, page.total
