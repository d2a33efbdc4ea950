"""The create page: the seed's WorkflowInterface, its errors, its cost, templates and batches."""

from __future__ import annotations

from sqlalchemy import func, select

from core import templates
from core.models import Template, Workflow
from core.prompts import ShotChoices, build_video_prompt
from core.schemas import IMAGE_PROMPT_MAX_CHARS
from core.states import WorkflowStatus
from core.ui import nav
from tests.ui.conftest import app_for, load, queued_run, refreshed, texts, wait_until_done


def create_page(user):
    return app_for(user, page=nav.CREATE.path)


def fill(at, image: str, video: str):
    at.text_area(key="create_image_prompt").input(image)
    at.text_area(key="create_video_prompt").input(video)
    at.radio(key="create_duration").set_value("4s")  # a shorter clip encodes faster
    return at.run()


def runs_of(runtime, user) -> int:
    with runtime.db.read() as session:
        return session.execute(
            select(func.count()).select_from(Workflow).where(Workflow.user_id == user.id)
        ).scalar_one()


def test_the_page_shows_the_cost_beside_the_balance(engine, make_user):
    at = create_page(make_user(credits=100))
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    # Defaults: standard landscape image (3) + 8 s of 720p with audio (2/s).
    assert metrics["Cost"] == "19 cr"
    assert metrics["Balance"] == "100 cr"
    assert not at.button(key="create_start").disabled


def test_changing_the_settings_changes_the_estimate(engine, make_user):
    at = create_page(make_user())
    at.radio(key="create_quality").set_value("hd")
    at.radio(key="create_resolution").set_value("1080p")
    at.toggle(key="create_audio").set_value(False)
    at.run()
    # hd landscape (6) + 8 s of silent 1080p (2/s)
    assert {m.label: m.value for m in at.metric}["Cost"] == "22 cr"


def test_empty_prompts_are_shown_inline_and_nothing_is_charged(engine, make_user, runtime):
    user = make_user()
    at = create_page(user)
    at.button(key="create_start").click().run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert "The image prompt must not be empty" in errors
    assert "The video prompt must not be empty" in errors
    assert runs_of(runtime, user) == 0
    assert refreshed(runtime, user).balance == 100


def test_an_inline_error_goes_away_once_the_field_is_fixed(engine, make_user):
    at = create_page(make_user())
    at.button(key="create_start").click().run()
    at = fill(at, "a lighthouse at dusk", "")
    errors = [e.value for e in at.error]
    assert errors == ["The video prompt must not be empty"]


def test_an_oversized_prompt_is_refused_with_its_limit(engine, make_user, runtime):
    user = make_user()
    at = fill(create_page(user), "x" * (IMAGE_PROMPT_MAX_CHARS + 1), "slow pan")
    at.button(key="create_start").click().run()
    assert not at.exception
    assert any("too long (at most 4,000 characters)" in e.value for e in at.error)
    assert runs_of(runtime, user) == 0


def test_start_creates_a_workflow_and_opens_its_watch_page(engine, make_user, runtime):
    user = make_user()
    at = fill(create_page(user), "a red fox in fresh snow", "slow dolly in")
    at.button(key="create_start").click().run()
    assert not at.exception
    workflow_id = at.query_params["id"]
    assert f"Run {workflow_id[:8]}" in texts(at)
    view = wait_until_done(runtime, workflow_id)
    assert view.request.image_prompt == "a red fox in fresh snow"
    assert view.status is WorkflowStatus.COMPLETED
    assert refreshed(runtime, user).balance == 100 - view.cost_credits


def test_a_repeated_submission_of_one_form_makes_one_run_and_one_charge(engine, make_user, runtime):
    user = make_user()
    first = fill(create_page(user), "a red fox", "slow pan")
    first.session_state["create_client_key"] = "same-form"
    first.button(key="create_start").click().run()
    second = fill(create_page(user), "a red fox", "slow pan")
    second.session_state["create_client_key"] = "same-form"  # the double click's copy
    second.button(key="create_start").click().run()
    assert first.query_params["id"] == second.query_params["id"]
    assert runs_of(runtime, user) == 1
    runtime.cancel(first.query_params["id"], user)  # not needed any further


def test_start_is_disabled_with_the_reason_when_credits_are_short(engine, make_user, runtime):
    user = make_user(credits=5)
    at = fill(create_page(user), "a red fox", "slow pan")
    assert at.button(key="create_start").disabled
    assert any("Not enough credits: this needs 11" in w.value for w in at.warning)
    assert runs_of(runtime, user) == 0


def test_the_builder_composes_an_editable_video_prompt(engine, make_user):
    at = create_page(make_user())
    at.text_input(key="create_b_action").input("a fox trots towards the camera")
    at.selectbox(key="create_b_camera").set_value("orbit around the subject")
    at.selectbox(key="create_b_mood").set_value("mysterious")
    at.run()
    at.button(key="create_b_use").click().run()
    expected = build_video_prompt(
        ShotChoices(
            "a fox trots towards the camera", camera="orbit around the subject", mood="mysterious"
        )
    )
    assert at.text_area(key="create_video_prompt").value == expected


def test_the_preview_shows_the_prompts_actually_sent(engine, make_user):
    at = fill(create_page(make_user()), "a red fox", "slow pan")
    sent = [c.value for c in at.code]
    assert any(s.startswith("a red fox. Composed as the opening frame") for s in sent)
    assert any(s.startswith("slow pan. Animate the provided image") for s in sent)


def test_a_template_saves_and_loads_prompts_settings_and_builder(engine, make_user, runtime):
    user = make_user()
    at = fill(create_page(user), "a lighthouse in a storm", "waves crash below")
    at.radio(key="create_style").set_value("natural")
    at.selectbox(key="create_b_lighting").set_value("moonlight")
    at.text_input(key="create_template_name").input("Stormy")
    at.run()
    at.button(key="create_template_save").click().run()
    assert any("Template saved:" in s.value for s in at.success)
    assert "Stormy" in [t.value for t in at.text]  # the name, shown literally

    with runtime.db.read() as session:
        (saved,) = templates.list_templates(session, user.id)
    fresh = create_page(user)
    fresh.selectbox(key="create_template").set_value(saved.id).run()
    fresh.button(key="create_template_load").click().run()
    assert not fresh.exception
    assert fresh.text_area(key="create_image_prompt").value == "a lighthouse in a storm"
    assert fresh.radio(key="create_style").value == "natural"
    assert fresh.selectbox(key="create_b_lighting").value == "moonlight"


def test_a_stored_template_with_unknown_values_loads_with_a_notice(engine, make_user, runtime):
    user = make_user()
    with runtime.db.begin() as session:
        legacy = Template(
            user_id=user.id,
            name="Legacy",
            payload={
                "request": {
                    "imagePrompt": "an old preset",
                    "videoPrompt": "slow pan",
                    "imageConfig": {"style": "sepia", "size": "512x512"},
                    "videoConfig": {"duration": "8s", "resolution": "4k"},
                },
                "builder": {"camera": "warp speed"},
            },
        )
        session.add(legacy)
        session.flush()
        legacy_id = legacy.id
    at = create_page(user)
    at.selectbox(key="create_template").set_value(legacy_id).run()
    at.button(key="create_template_load").click().run()
    assert not at.exception
    assert all(w.value == "Template:" for w in at.warning)
    notices = " ".join(t.value for t in at.text)  # the stored values, shown literally
    assert "style 'sepia' is not available; using 'vivid'" in notices
    assert "resolution '4k' is not available" in notices
    assert at.radio(key="create_resolution").value == "720p"
    assert at.selectbox(key="create_b_camera").value == "slow dolly in"


def test_a_template_needs_valid_prompts(engine, make_user, runtime):
    user = make_user()
    at = create_page(user)
    at.text_input(key="create_template_name").input("Empty")
    at.run()
    at.button(key="create_template_save").click().run()
    assert any("Template not saved" in e.value for e in at.error)
    with runtime.db.read() as session:
        assert templates.list_templates(session, user.id) == []


def test_a_new_project_is_created_selected_and_stored_on_the_run(engine, make_user, runtime):
    user = make_user()
    at = fill(create_page(user), "a red fox", "slow pan")
    at.text_input(key="create_new_project").input("Winter campaign")
    at.run()
    at.button(key="create_new_project_btn").click().run()
    project_id = at.selectbox(key="create_project").value
    assert project_id is not None
    at.button(key="create_start").click().run()
    view = load(runtime, at.query_params["id"])
    assert view.project_id == project_id
    runtime.cancel(view.id, user)


def test_a_batch_starts_one_run_per_variation_and_lists_them(engine, make_user, runtime):
    user = make_user(credits=200)
    at = fill(create_page(user), "a red fox", "slow pan")
    at.number_input(key="create_batch_count").set_value(3).run()
    at.selectbox(key="create_batch_mode").set_value("lighting").run()
    assert {m.label: m.value for m in at.metric}["Cost"] == "33 cr"  # 3 × (3 + 4 × 2)
    at.button(key="create_start").click().run()
    assert not at.exception
    assert at.query_params["batch"]
    with runtime.db.read() as session:
        prompts = sorted(
            session.execute(
                select(Workflow.video_prompt).where(Workflow.user_id == user.id)
            ).scalars()
        )
    assert prompts == [
        "slow pan. Lighting: blue hour.",
        "slow pan. Lighting: golden hour.",
        "slow pan. Lighting: soft overcast light.",
    ]
    assert "Started 3 runs" in texts(at)
    with runtime.db.read() as session:
        ids = session.execute(select(Workflow.id).where(Workflow.user_id == user.id)).scalars()
        for workflow_id in list(ids):
            runtime.cancel(workflow_id, user)


def test_duplicate_fills_the_form_from_a_run_without_starting_it(engine, make_user, runtime):
    user = make_user()
    source = queued_run(runtime, user)
    at = app_for(user, page=nav.CREATE.path, **{"from": source})
    assert not at.exception
    assert at.text_area(key="create_image_prompt").value == "a red fox in fresh snow"
    assert at.radio(key="create_duration").value == "4s"
    assert runs_of(runtime, user) == 1


def test_duplicating_someone_elses_run_is_refused(engine, make_user, runtime):
    owner, other = make_user(), make_user()
    source = queued_run(runtime, owner)
    at = app_for(other, page=nav.CREATE.path, **{"from": source})
    assert not at.exception
    assert any("There is no such run in your account" in e.value for e in at.error)
    assert source in [t.value for t in at.text]
    assert at.text_area(key="create_image_prompt").value == ""
    assert runs_of(runtime, other) == 0


def test_a_chosen_video_model_is_stored_on_the_run(engine, make_user, runtime):
    user = make_user()
    at = fill(create_page(user), "a red fox", "slow pan")
    fast = "fal-ai/veo3.1/fast/image-to-video"
    at.selectbox(key="create_video_model").set_value(fast).run()
    at.button(key="create_start").click().run()
    view = load(runtime, at.query_params["id"])
    assert view.request.video_model == fast
    runtime.cancel(view.id, user)
