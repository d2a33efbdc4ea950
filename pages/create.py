"""Create: the seed's WorkflowInterface. Prompts, image and video settings, the video prompt
builder, a preview of what is sent, the cost beside the balance, templates, batches, Start."""

import logging

import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from core import budgets, launch, projects, prompts, templates
from core.errors import (
    BudgetExceededError,
    InsufficientCreditsError,
    NotFoundError,
    PermissionDeniedError,
    RequestValidationError,
)
from core.schemas import IMAGE_PROMPT_MAX_CHARS, VIDEO_PROMPT_MAX_CHARS, WEBHOOK_EVENTS
from core.ui import create_form as cf
from core.ui import labels, nav, text
from core.ui.database import guarded
from core.ui.forms import char_counter, field_errors
from core.ui.runtime import get_runtime
from core.ui.session import flash, require_user, show_flashes
from core.ui.webhook_secret import webhook_secret

log = logging.getLogger("core.pages.create")

runtime = get_runtime()
user = require_user()
cf.init_state()

source = st.query_params.get("from")
if source and st.session_state.get("create_prefilled_from") != source:
    st.session_state["create_prefilled_from"] = source
    cf.prefill_from_run(runtime, user, source)

with guarded("create page could not read projects and templates"), runtime.db.read() as session:
    my_projects = projects.list_projects(session, user.id)
    my_templates = templates.list_templates(session, user.id)

project_names = {p.id: p.name for p in my_projects}
template_names = {t.id: t.name for t in my_templates}
if st.session_state["create_project"] not in project_names:
    st.session_state["create_project"] = None  # gone, or another user's (an admin's copy)
if st.session_state["create_template"] not in template_names:
    st.session_state["create_template"] = None

st.title("🎬 Create a video")
st.caption("An image prompt becomes the first frame; the video prompt sets it in motion.")
show_flashes()
for kind, message, detail in st.session_state.pop(cf.MESSAGES_KEY, []):
    text.alert(kind, message, detail)

form = cf.form()
batch_count = int(st.session_state["create_batch_count"])
variants = launch.variations(
    form, batch_count, st.session_state["create_batch_mode"], cf.builder_choices()
)
problems: dict[str, str] = {}
if st.session_state.get("create_tried"):
    try:
        launch.validate_all(variants)
    except RequestValidationError as exc:
        problems = exc.problems
# Refused only at start (the address is looked up then); shown while the URL is unchanged.
refused = st.session_state.get("create_webhook_refused")
if refused and refused[0] == form.webhook_url:
    problems.setdefault("webhookUrl", refused[1])

main, side = st.columns([2, 1], gap="large")

with main:
    # -- project and templates ----------------------------------------------------------------
    left, right = st.columns(2)
    with left:
        # None means "no project": the selectbox shows its placeholder for it.
        st.selectbox(
            "Project",
            list(project_names),
            format_func=project_names.get,
            key="create_project",
            placeholder="No project",
        )
        with st.container(horizontal=True):
            with st.popover("New project", icon=":material/create_new_folder:"):
                st.text_input("Name", key="create_new_project", max_chars=120)
                st.button(
                    "Create project",
                    key="create_new_project_btn",
                    on_click=cf.create_project,
                    args=(runtime, user.id),
                )
            if st.session_state["create_project"] is not None:
                st.button(
                    "No project",
                    key="create_project_clear",
                    icon=":material/folder_off:",
                    on_click=cf.clear_project,
                )
        field_errors(problems, "projectId")
    with right:
        st.selectbox(
            "Template",
            list(template_names),
            format_func=template_names.get,
            key="create_template",
            placeholder="Choose a template…",
        )
        chosen = st.session_state["create_template"] is not None
        with st.container(horizontal=True):
            st.button(
                "Load",
                key="create_template_load",
                icon=":material/file_open:",
                on_click=cf.load_template,
                args=(runtime, user.id),
                disabled=not chosen,
            )
            with st.popover("Save", icon=":material/save:"):
                st.text_input("Template name", key="create_template_name", max_chars=120)
                st.caption("Saves both prompts, the settings and the builder's choices.")
                st.button(
                    "Save template",
                    key="create_template_save",
                    on_click=cf.save_template,
                    args=(runtime, user.id),
                )
            st.button(
                "Delete",
                key="create_template_delete",
                icon=":material/delete:",
                on_click=cf.delete_template,
                args=(runtime, user.id),
                disabled=not chosen,
            )

    # -- the image ----------------------------------------------------------------------------
    st.subheader("🎨 Image")
    st.text_area(
        "Image prompt",
        key="create_image_prompt",
        height=110,
        placeholder="A red fox standing in fresh snow at the edge of a pine forest",
    )
    char_counter(st.session_state["create_image_prompt"], IMAGE_PROMPT_MAX_CHARS)
    field_errors(problems, "imagePrompt")
    style, quality, size = st.columns(3)
    style.radio("Style", launch.STYLES, key="create_style", horizontal=True)
    quality.radio("Quality", launch.QUALITIES, key="create_quality", horizontal=True)
    size.selectbox("Size", launch.SIZES, key="create_size", format_func=labels.SIZE_LABELS.get)
    image_model, _ = st.columns(2)
    image_model.selectbox(
        "Image model",
        list(labels.IMAGE_MODEL_LABELS),
        key="create_image_model",
        format_func=labels.IMAGE_MODEL_LABELS.get,
        placeholder=cf.default_model_label(runtime, "image"),
        help=cf.offline_note(runtime, "image"),
    )
    field_errors(problems, "imageConfig", "imageModel")

    # -- the video ----------------------------------------------------------------------------
    st.subheader("🎥 Video")
    with st.expander("Video prompt builder", icon=":material/auto_awesome:"):
        st.text_input(
            "Subject and action",
            key="create_b_action",
            placeholder="the fox lifts its head and trots towards the camera",
        )
        b1, b2, b3 = st.columns(3)
        b1.selectbox("Camera movement", prompts.CAMERA_MOVEMENTS, key="create_b_camera")
        b2.selectbox("Shot type", prompts.SHOT_TYPES, key="create_b_shot")
        b3.selectbox("Lighting", prompts.LIGHTING, key="create_b_lighting")
        b4, b5 = st.columns(2)
        b4.selectbox("Mood", prompts.MOODS, key="create_b_mood")
        b5.selectbox("Pace", prompts.PACES, key="create_b_pace")
        composed = prompts.build_video_prompt(cf.builder_choices())
        st.code(composed, language=None, wrap_lines=True)
        st.button(
            "Use this as the video prompt",
            key="create_b_use",
            icon=":material/arrow_downward:",
            on_click=cf.use_builder_prompt,
        )
    st.text_area(
        "Video prompt",
        key="create_video_prompt",
        height=110,
        placeholder="Slow dolly in, snow falling, the fox looks up",
    )
    char_counter(st.session_state["create_video_prompt"], VIDEO_PROMPT_MAX_CHARS)
    field_errors(problems, "videoPrompt")
    duration, resolution, aspect = st.columns(3)
    duration.radio("Duration", launch.DURATIONS, key="create_duration", horizontal=True)
    resolution.radio("Resolution", launch.RESOLUTIONS, key="create_resolution", horizontal=True)
    aspect.selectbox(
        "Aspect ratio", launch.ASPECTS, key="create_aspect", format_func=labels.ASPECT_LABELS.get
    )
    video_model, audio = st.columns(2, vertical_alignment="bottom")
    audio.toggle("Generate audio", key="create_audio", help="A soundtrack made with the clip")
    video_model.selectbox(
        "Video model",
        list(labels.VIDEO_MODEL_LABELS),
        key="create_video_model",
        format_func=labels.VIDEO_MODEL_LABELS.get,
        placeholder=cf.default_model_label(runtime, "video"),
        help=cf.offline_note(runtime, "video"),
    )
    snapped = cf.snapped_duration_s(runtime)
    if snapped is not None:
        st.caption(f"This model renders {snapped} s clips: the run gets {snapped} s.")
    field_errors(problems, "videoConfig", "videoModel")

    with st.expander("Advanced: webhook", icon=":material/webhook:"):
        st.text_input(
            "Webhook URL",
            key="create_webhook_url",
            max_chars=2000,
            placeholder="https://example.com/hooks/reelforge (optional)",
            help="Each event of the run is POSTed here, signed with your secret (Standard "
            "Webhooks). The address must be public.",
        )
        st.multiselect(
            "Webhook events",
            list(WEBHOOK_EVENTS),
            key="create_webhook_events",
            format_func=labels.WEBHOOK_EVENT_LABELS.get,
        )
        field_errors(problems, "webhookUrl", "webhookEvents")
        webhook_secret(runtime, user, key="create_webhook_secret")

    with st.expander("Prompts that will be sent", icon=":material/visibility:"):
        first = variants[0]
        st.caption("To the image model (written as the first frame of a shot):")
        st.code(
            prompts.first_frame_prompt(first.image_prompt or "…", first.style),
            language=None,
            wrap_lines=True,
        )
        st.caption("To the video model (motion anchored on that frame):")
        st.code(prompts.motion_prompt(first.video_prompt or "…"), language=None, wrap_lines=True)

form = cf.form()
cf.save_draft()

with side:
    # -- batch, cost and start ------------------------------------------------------------------
    with st.container(border=True):
        st.subheader("🚀 Launch")
        st.number_input(
            "Runs", min_value=1, max_value=launch.MAX_BATCH, step=1, key="create_batch_count"
        )
        if batch_count > 1:
            st.selectbox(
                "Variations",
                list(labels.VARIATION_LABELS),
                key="create_batch_mode",
                format_func=labels.VARIATION_LABELS.get,
            )
            with st.expander(f"The {batch_count} runs"):
                for number, variant in enumerate(variants, start=1):
                    text.literal(f"{number}. {variant.video_prompt or '(no video prompt yet)'}")
        field_errors(problems, "batch")
        try:
            with runtime.db.read() as session:
                unit_cost = launch.estimate_cost(session, form)
                budget = budgets.tightest(session, user.id, form.project_id)
        except SQLAlchemyError:
            unit_cost, budget = None, None
        total = None if unit_cost is None else unit_cost * batch_count
        cost_col, balance_col, budget_col = st.columns(3)
        cost_col.metric("Cost", "–" if total is None else f"{total:,} cr")
        balance_col.metric("Balance", f"{user.balance:,} cr")
        if budget is not None:
            budget_col.metric(
                "Budget left",
                f"{budget.left:,} cr",
                help=cf.budget_help(budget),
            )
        short = total is not None and total > user.balance
        over_budget = budget is not None and total is not None and total > budget.left
        if short:
            st.warning(
                f"Not enough credits: this needs {total:,} and your balance is {user.balance:,}. "
                "Start fewer runs, pick cheaper settings (standard quality, 720p, no audio) "
                "or ask an admin for credits.",
                icon=":material/account_balance_wallet:",
            )
        elif over_budget:
            st.warning(
                f"Over budget: this needs {total:,} credits and the monthly budget has "
                f"{budget.left:,} left. {cf.budget_help(budget)}",
                icon=":material/savings:",
            )
        elif total is None:
            st.caption("Pick valid settings to see the cost.")
        else:
            each = f"{batch_count} runs × {unit_cost} credits · " if batch_count > 1 else ""
            st.caption(f"{each}{user.balance - total:,} credits left after starting")
        still = None
        with guarded("create page could not look for a still to reuse", stop=False):
            still = launch.still_reuse(runtime, user, form, batch_count)
        if still is not None:
            saves = f"(saves {still.saved} credits)"
            if still.source is not None:
                offer = f"Reuse the still from run {still.source[:8]} {saves}"
            else:
                offer = f"Share one still across the {batch_count} runs {saves}"
            st.toggle(
                offer,
                key="create_reuse_still",
                help="Off: generate a fresh still. The full cost is held at start; the still's "
                "credits come back once the reused still is found intact in storage.",
            )
        started = st.button(
            "Start" if batch_count == 1 else f"Start {batch_count} runs",
            key="create_start",
            type="primary",
            icon=":material/play_arrow:",
            width="stretch",
            disabled=short or over_budget or total is None,
            help="Your balance does not cover this."
            if short
            else "Your monthly budget does not cover this."
            if over_budget
            else None,
        )

if started:
    st.session_state["create_tried"] = True
    client_key = st.session_state[cf.CLIENT_KEY]
    try:
        outcome = launch.start_batch(
            runtime,
            user,
            variants,
            client_key,
            reuse_still=bool(st.session_state["create_reuse_still"]),
        )
    except RequestValidationError as exc:
        if "webhookUrl" in exc.problems:
            st.session_state["create_webhook_refused"] = (
                form.webhook_url,
                exc.problems["webhookUrl"],
            )
        st.rerun()  # the fields show their problems inline on the next run
    except (InsufficientCreditsError, BudgetExceededError) as exc:
        text.alert("error", "Not started, nothing charged:", str(exc))
    except (NotFoundError, PermissionDeniedError) as exc:
        text.alert("error", "Not started, nothing charged:", str(exc))
    except SQLAlchemyError:
        log.exception("App - start failed on the database")
        st.error("The run could not be started right now (database). Nothing was charged.")
    else:
        cf.new_client_key()
        st.session_state["create_tried"] = False
        ids = outcome.workflow_ids
        if outcome.shortfall is not None:
            flash(
                f"Started {len(ids)} of {batch_count} runs: then the credits or a budget ran out "
                f"({outcome.shortfall}).",
                "warning",
            )
        if len(ids) == 1:
            st.switch_page(nav.WATCH.path, query_params={"id": ids[0]})
        flash(f"Started {len(ids)} runs. They update here live.")
        st.switch_page(nav.HISTORY.path, query_params={"batch": client_key})
