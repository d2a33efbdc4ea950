"""The create page's state: widget keys and defaults, the form read back as FormFields, and the
callbacks behind its buttons (templates, projects, the prompt builder). Callbacks run before the
page is drawn, so they may set the values of the widgets below them."""

from __future__ import annotations

import logging
import uuid
from dataclasses import asdict
from typing import Any

import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from core import launch, projects, prompts, templates, workflows
from core.auth import UserView
from core.budgets import BudgetStatus, ScopeKind
from core.errors import NotFoundError, RequestValidationError
from core.launch import FormFields
from core.runtime import Runtime
from core.ui import labels
from core.ui.forms import remember, restore

log = logging.getLogger(__name__)

DRAFT_KEY = "create_draft"
CLIENT_KEY = "create_client_key"
MESSAGES_KEY = "create_messages"

# FormFields field -> widget key
FIELD_KEYS: dict[str, str] = {
    "image_prompt": "create_image_prompt",
    "video_prompt": "create_video_prompt",
    "style": "create_style",
    "quality": "create_quality",
    "size": "create_size",
    "duration": "create_duration",
    "resolution": "create_resolution",
    "generate_audio": "create_audio",
    "aspect_ratio": "create_aspect",
    "project_id": "create_project",
    "image_model": "create_image_model",
    "video_model": "create_video_model",
    "webhook_url": "create_webhook_url",
    "webhook_events": "create_webhook_events",
}
# ShotChoices field -> widget key
BUILDER_KEYS: dict[str, str] = {
    "subject_action": "create_b_action",
    "camera": "create_b_camera",
    "shot": "create_b_shot",
    "lighting": "create_b_lighting",
    "mood": "create_b_mood",
    "pace": "create_b_pace",
}
OTHER_DEFAULTS: dict[str, Any] = {
    "create_batch_count": 1,
    "create_batch_mode": "takes",
    "create_template": None,
    "create_reuse_still": True,
}
BUILDER_OPTIONS: dict[str, tuple[str, ...]] = {
    "camera": prompts.CAMERA_MOVEMENTS,
    "shot": prompts.SHOT_TYPES,
    "lighting": prompts.LIGHTING,
    "mood": prompts.MOODS,
    "pace": prompts.PACES,
}


def _defaults() -> dict[str, Any]:
    values = {FIELD_KEYS[k]: v for k, v in asdict(FormFields()).items()}
    values.update({BUILDER_KEYS[k]: v for k, v in asdict(prompts.ShotChoices("")).items()})
    return {**values, **OTHER_DEFAULTS}


def init_state() -> None:
    restore(DRAFT_KEY, _defaults())
    st.session_state.setdefault(CLIENT_KEY, uuid.uuid4().hex)


def save_draft() -> None:
    remember(DRAFT_KEY, _defaults().keys())


def new_client_key() -> None:
    """A fresh key for the next submission; the one just used keeps a double click to one run."""
    st.session_state[CLIENT_KEY] = uuid.uuid4().hex


def form() -> FormFields:
    return FormFields(**{name: st.session_state[key] for name, key in FIELD_KEYS.items()})


def builder_choices() -> prompts.ShotChoices:
    return prompts.ShotChoices(**{n: st.session_state[k] for n, k in BUILDER_KEYS.items()})


def offline_note(runtime: Runtime, capability: str) -> str | None:
    if runtime.providers.labels.get(capability) == "offline":
        return "This installation runs offline: the offline provider stands in for any model."
    return None


def default_model_label(runtime: Runtime, capability: str) -> str:
    """The placeholder of a model picker: None there means the installation's default."""
    settings = runtime.settings
    if capability == "image":
        key, names = settings.image_model, labels.IMAGE_MODEL_LABELS
    else:
        key, names = settings.video_model, labels.VIDEO_MODEL_LABELS
    return f"Default · {names.get(key, key)}"


def snapped_duration_s(runtime: Runtime) -> int | None:
    """The clip length a real video model will make instead of the one asked for, if any."""
    if runtime.providers.labels.get("video") == "offline":
        return None  # the offline provider renders exactly what was asked
    return launch.snapped_duration_s(form(), runtime.settings.video_model)


BUDGET_OWNERS = {
    ScopeKind.USER: "Your monthly budget",
    ScopeKind.PROJECT: "This project's monthly budget",
    ScopeKind.TEAM: "The team's monthly budget",
}


def budget_help(budget: BudgetStatus) -> str:
    """Which budget the "Budget left" figure is, and when it resets (in our words only: the
    budget's name may hold a project name, which is user text)."""
    return (
        f"{BUDGET_OWNERS[budget.scope.kind]}: {budget.spent:,} of {budget.limit:,} credits "
        f"spent; it resets on {budget.resets_at:%d %B %Y} at 00:00 UTC (calendar months, UTC)."
    )


def message(kind: str, text: str, detail: str | None = None) -> None:
    """A message for the page's next run; `detail` is user text, shown literally."""
    st.session_state.setdefault(MESSAGES_KEY, []).append((kind, text, detail))


def apply_fields(fields: FormFields, *, keep_project: bool = False) -> None:
    for name, key in FIELD_KEYS.items():
        if name == "project_id" and keep_project:
            continue
        st.session_state[key] = getattr(fields, name)


def apply_builder(values: dict[str, str]) -> None:
    for name, key in BUILDER_KEYS.items():
        value = values.get(name)
        if value is None:
            continue
        options = BUILDER_OPTIONS.get(name)
        if options is None or value in options:
            st.session_state[key] = value


# ---------------------------------------------------------------------------------------------
# Callbacks


def use_builder_prompt() -> None:
    choices = builder_choices()
    if not choices.subject_action.strip():
        message("warning", "Describe the subject and its action first, then use the prompt.")
        return
    st.session_state[FIELD_KEYS["video_prompt"]] = prompts.build_video_prompt(choices)
    message("success", "The composed prompt is now the video prompt; edit it as you like.")


def clear_project() -> None:
    st.session_state[FIELD_KEYS["project_id"]] = None


def create_project(runtime: Runtime, user_id: int) -> None:
    name = st.session_state.get("create_new_project", "")
    try:
        with runtime.db.begin() as session:
            project = projects.create_project(session, user_id, name)
    except RequestValidationError as exc:
        message("error", "Project not created:", exc.problems.get("project"))
        return
    except SQLAlchemyError:
        log.exception("App - could not create a project")
        message("error", "The project could not be saved right now; try again in a moment.")
        return
    st.session_state[FIELD_KEYS["project_id"]] = project.id
    st.session_state["create_new_project"] = ""
    message("success", "Project created and selected:", project.name)


def load_template(runtime: Runtime, user_id: int) -> None:
    template_id = st.session_state.get("create_template")
    if template_id is None:
        message("warning", "Pick a template to load.")
        return
    try:
        with runtime.db.read() as session:
            template = templates.get_template(session, user_id, template_id)
    except NotFoundError:
        message("error", "That template no longer exists.")
        return
    fields, notices = launch.fields_from_request(template.request)
    apply_fields(fields, keep_project=True)
    apply_builder(template.builder)
    message("success", "Loaded the template:", template.name)
    for notice in notices:
        message("warning", "Template:", notice)


def save_template(runtime: Runtime, user_id: int) -> None:
    name = st.session_state.get("create_template_name", "")
    try:
        with runtime.db.begin() as session:
            template, created = templates.save_template(
                session, user_id, name, form().payload(), asdict(builder_choices())
            )
    except RequestValidationError as exc:
        details = "; ".join(f"{k} {v}" for k, v in exc.problems.items())
        message("error", "Template not saved:", details)
        return
    except SQLAlchemyError:
        log.exception("App - could not save a template")
        message("error", "The template could not be saved right now; try again in a moment.")
        return
    st.session_state["create_template"] = template.id
    st.session_state["create_template_name"] = ""
    verb = "saved" if created else "updated"
    message("success", f"Template {verb}:", template.name)


def delete_template(runtime: Runtime, user_id: int) -> None:
    template_id = st.session_state.get("create_template")
    if template_id is None:
        return
    try:
        with runtime.db.begin() as session:
            templates.delete_template(session, user_id, template_id)
    except NotFoundError:
        pass
    st.session_state["create_template"] = None
    message("success", "Template deleted.")


def prefill_from_run(runtime: Runtime, user: UserView, workflow_id: str) -> None:
    """Fill the form from one of the user's runs (the watch page's Duplicate)."""
    try:
        with runtime.db.read() as session:
            view = workflows.workflow_for(session, workflow_id, user)
    except NotFoundError:
        message("error", "There is no such run in your account to copy from:", workflow_id[:64])
        return
    fields, notices = launch.fields_from_request(view.request.to_json())
    own_run = view.user_id == user.id
    theirs = {"project_id": None, "webhook_url": ""}  # an admin's copy of a user's run
    apply_fields(fields if own_run else FormFields(**{**asdict(fields), **theirs}))
    message(
        "info",
        f"Copied the prompts and settings of run {view.id[:8]}. Nothing starts "
        "until you press Start.",
    )
    for notice in notices:
        message("warning", "Not copied exactly:", notice)
