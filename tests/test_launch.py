"""The create form as a request: payload shape, prefill from stored requests, batches, cost."""

from __future__ import annotations

import pytest

from core import launch, prompts
from core.errors import InsufficientCreditsError, RequestValidationError
from core.launch import FormFields
from core.prompts import ShotChoices
from core.providers import catalog
from core.runtime import Runtime
from core.schemas import parse_request
from tests.helpers import ParkedExecutor


@pytest.fixture
def runtime(settings):
    engine = Runtime(settings, upgrade=False, executor=ParkedExecutor())
    yield engine
    engine.shutdown()


def test_the_default_form_is_a_valid_request_once_prompts_are_given():
    form = FormFields(image_prompt="a fox", video_prompt="slow pan")
    request = parse_request(form.payload())
    assert request.image_config.size == "1792x1024"
    assert request.video_config.duration == "8s"
    assert request.video_config.aspect_ratio is None


def test_a_chosen_aspect_ratio_and_project_reach_the_request():
    form = FormFields(image_prompt="a", video_prompt="b", aspect_ratio="9:16", project_id=7)
    payload = form.payload()
    assert payload["videoConfig"]["aspectRatio"] == "9:16"
    assert payload["projectId"] == 7


def test_a_stored_request_fills_the_form():
    stored = parse_request(
        {
            "imagePrompt": "an owl",
            "videoPrompt": "tilt up",
            "imageConfig": {"style": "natural", "quality": "hd", "size": "1024x1792"},
            "videoConfig": {"duration": "6s", "resolution": "1080p", "generateAudio": False},
            "projectId": 3,
        }
    ).to_json()
    fields, notices = launch.fields_from_request(stored)
    assert notices == []
    assert fields == FormFields(
        image_prompt="an owl",
        video_prompt="tilt up",
        style="natural",
        quality="hd",
        size="1024x1792",
        duration="6s",
        resolution="1080p",
        generate_audio=False,
        project_id=3,
    )


def test_unknown_values_fall_back_to_defaults_and_are_named():
    fields, notices = launch.fields_from_request(
        {
            "imagePrompt": "x",
            "imageConfig": {"style": "sepia", "quality": "hd"},
            "videoConfig": {"duration": "30s", "generateAudio": "yes"},
        }
    )
    assert fields.style == "vivid" and fields.quality == "hd"
    assert fields.duration == "8s" and fields.generate_audio is True
    assert len(notices) == 3
    assert "style 'sepia' is not available; using 'vivid' instead" in notices


def test_takes_repeat_the_prompts_and_variations_append_one_option_each():
    base = FormFields(image_prompt="a fox", video_prompt="slow pan.")
    assert launch.variations(base, 3, "takes") == [base] * 3
    camera = launch.variations(base, 2, "camera")
    assert [v.video_prompt for v in camera] == [
        "slow pan. Camera: static shot.",
        "slow pan. Camera: slow dolly in.",
    ]


def test_a_variation_replaces_the_builders_own_choice_instead_of_contradicting_it():
    choices = ShotChoices("a fox trots through snow", lighting="golden hour")
    base = FormFields(image_prompt="a fox", video_prompt=prompts.build_video_prompt(choices))
    lit = launch.variations(base, 3, "lighting", choices)
    assert [v.video_prompt for v in lit] == [
        base.video_prompt.replace("Golden hour", option[:1].upper() + option[1:])
        for option in prompts.LIGHTING[:3]
    ]
    assert all("Lighting:" not in v.video_prompt for v in lit)
    moved = launch.variations(base, 2, "camera", choices)
    assert [v.video_prompt.split(". ")[0] for v in moved] == [
        f"Wide shot, {option}" for option in prompts.CAMERA_MOVEMENTS[:2]
    ]


@pytest.mark.parametrize(("count", "mode"), [(0, "takes"), (11, "takes"), (2, "zoom")])
def test_a_batch_outside_the_limits_is_refused(count, mode):
    with pytest.raises(RequestValidationError) as refused:
        launch.variations(FormFields(), count, mode)
    assert "batch" in refused.value.problems


def test_a_batch_is_validated_whole_and_names_the_run():
    variants = [FormFields(image_prompt="a", video_prompt="b"), FormFields(image_prompt="a")]
    with pytest.raises(RequestValidationError) as refused:
        launch.validate_all(variants)
    assert refused.value.problems == {"videoPrompt": "must not be empty (run 2 of the batch)"}


def test_the_estimate_ignores_unfinished_prompts_but_not_invalid_settings(db):
    with db.read() as session:
        assert launch.estimate_cost(session, FormFields()) == 19
        assert launch.estimate_cost(session, FormFields(style="sepia")) is None


def test_a_batch_starts_every_run_and_a_double_click_starts_none_twice(runtime, make_user):
    user = make_user(credits=100)
    variants = launch.variations(FormFields(image_prompt="a", video_prompt="b"), 2, "mood")
    first = launch.start_batch(runtime, user, variants, "key-1")
    again = launch.start_batch(runtime, user, variants, "key-1")
    assert len(set(first.workflow_ids)) == 2
    assert again.workflow_ids == first.workflow_ids


def test_a_batch_stops_when_the_credits_run_out(runtime, make_user):
    user = make_user(credits=40)  # two runs of 19
    variants = launch.variations(FormFields(image_prompt="a", video_prompt="b"), 3, "takes")
    outcome = launch.start_batch(runtime, user, variants, "key-2")
    assert len(outcome.workflow_ids) == 2
    assert isinstance(outcome.shortfall, InsufficientCreditsError)


def test_a_batch_that_cannot_start_at_all_raises(runtime, make_user):
    user = make_user(credits=5)
    with pytest.raises(InsufficientCreditsError):
        launch.start_batch(runtime, user, [FormFields(image_prompt="a", video_prompt="b")], "k")


def test_an_unknown_setting_is_refused_before_anything_is_charged(runtime, make_user):
    user = make_user(credits=100)
    with pytest.raises(RequestValidationError) as refused:
        launch.start_batch(
            runtime, user, [FormFields(image_prompt="a", video_prompt="b", size="9x9")], "k"
        )
    assert "imageConfig.size" in refused.value.problems


def test_a_rerun_of_someone_elses_run_leaves_their_project_out():
    request = parse_request({"imagePrompt": "a", "videoPrompt": "b", "projectId": 4})
    assert launch.rerun_payload(request, same_owner=True)["projectId"] == 4
    assert launch.rerun_payload(request, same_owner=False)["projectId"] is None


def test_a_chosen_model_reaches_the_request_and_an_unknown_one_is_named():
    form = FormFields(
        image_prompt="a", video_prompt="b", video_model="fal-ai/veo3.1/fast/image-to-video"
    )
    assert parse_request(form.payload()).video_model == form.video_model
    fields, notices = launch.fields_from_request({"imageModel": "midjourney-7"})
    assert fields.image_model is None
    assert notices == ["image model 'midjourney-7' is not available; using the default"]


def test_a_model_that_renders_other_lengths_is_flagged():
    kling = next(key for key in catalog.VIDEO_MODELS if "kling" in key)
    default = "fal-ai/veo3.1/image-to-video"
    assert launch.snapped_duration_s(FormFields(video_model=kling), default) == 10
    assert launch.snapped_duration_s(FormFields(), default) is None
