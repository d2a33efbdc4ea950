"""Templates: a user's named presets of prompts, image/video config and prompt-builder choices."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from core.clock import utcnow
from core.errors import NotFoundError, RequestValidationError
from core.models import Template
from core.prompts import ShotChoices
from core.schemas import clean_name, parse_request

TEMPLATE_NAME_MAX_CHARS = 120
MAX_TEMPLATES_PER_USER = 200


@dataclass(frozen=True)
class TemplateView:
    id: int
    name: str
    request: dict[str, Any]  # seed field names, without projectId
    builder: dict[str, str]  # ShotChoices fields; may be empty
    updated_at: datetime


def _view(row: Template) -> TemplateView:
    payload = row.payload or {}
    return TemplateView(
        id=row.id,
        name=row.name,
        request=dict(payload.get("request") or {}),
        builder=dict(payload.get("builder") or {}),
        updated_at=row.updated_at,
    )


def list_templates(session: Session, user_id: int) -> list[TemplateView]:
    rows = session.execute(
        select(Template).where(Template.user_id == user_id).order_by(func.lower(Template.name))
    ).scalars()
    return [_view(row) for row in rows]


def get_template(session: Session, user_id: int, template_id: int) -> TemplateView:
    row = session.get(Template, template_id)
    if row is None or row.user_id != user_id:
        raise NotFoundError(f"template {template_id} not found")
    return _view(row)


def save_template(
    session: Session,
    user_id: int,
    name: str,
    request: dict[str, Any],
    builder: dict[str, str] | None = None,
) -> tuple[TemplateView, bool]:
    """Save a preset under `name`, replacing the user's preset of that name. The request must
    be valid (so loading it can never produce a form that cannot start). Returns (view, created)."""
    name = clean_name(name, "template", TEMPLATE_NAME_MAX_CHARS)
    stored = parse_request({k: v for k, v in request.items() if k != "projectId"}).to_json()
    stored.pop("projectId", None)
    known = set(ShotChoices.__dataclass_fields__)
    choices = {k: str(v) for k, v in (builder or {}).items() if k in known}
    payload = {"request": stored, "builder": choices}
    row = session.execute(
        select(Template).where(Template.user_id == user_id, Template.name == name)
    ).scalar()
    created = row is None
    if row is None:
        count = session.execute(
            select(func.count()).select_from(Template).where(Template.user_id == user_id)
        ).scalar_one()
        if count >= MAX_TEMPLATES_PER_USER:
            raise RequestValidationError(
                {"template": f"you have {count} templates; delete some before saving more"}
            )
        row = Template(user_id=user_id, name=name, payload=payload)
        session.add(row)
    else:
        row.payload, row.updated_at = payload, utcnow()
    session.flush()
    return _view(row), created


def delete_template(session: Session, user_id: int, template_id: int) -> None:
    removed = session.execute(
        delete(Template).where(Template.id == template_id, Template.user_id == user_id),
        execution_options={"synchronize_session": False},
    ).rowcount
    if not removed:
        raise NotFoundError(f"template {template_id} not found")
