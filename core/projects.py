"""Projects: a user's named folders for runs (the seed's projectId), picked on the create page."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.errors import RequestValidationError
from core.models import Project, Workflow, view_of
from core.schemas import clean_name

PROJECT_NAME_MAX_CHARS = 120


@dataclass(frozen=True)
class ProjectView:
    id: int
    name: str
    created_at: datetime


def list_projects(session: Session, user_id: int) -> list[ProjectView]:
    rows = session.execute(
        select(Project).where(Project.user_id == user_id).order_by(func.lower(Project.name))
    ).scalars()
    return [view_of(ProjectView, row) for row in rows]


def create_project(session: Session, user_id: int, name: str) -> ProjectView:
    """A new project for the user; names are unique per user, ignoring case."""
    name = clean_name(name, "project", PROJECT_NAME_MAX_CHARS)
    taken = session.execute(
        select(Project.id).where(
            Project.user_id == user_id, func.lower(Project.name) == name.lower()
        )
    ).first()
    if taken:
        raise RequestValidationError({"project": f"you already have a project called {name!r}"})
    project = Project(user_id=user_id, name=name)
    session.add(project)
    session.flush()
    return view_of(ProjectView, project)


def project_run_counts(session: Session, user_id: int) -> dict[int, int]:
    rows = session.execute(
        select(Workflow.project_id, func.count())
        .where(Workflow.user_id == user_id, Workflow.project_id.is_not(None))
        .group_by(Workflow.project_id)
    )
    return {project_id: count for project_id, count in rows}
