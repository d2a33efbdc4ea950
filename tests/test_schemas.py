import pytest

from core.errors import RequestValidationError
from core.schemas import parse_request

VALID = {"imagePrompt": "a red fox in fresh snow", "videoPrompt": "slow dolly in"}


def problems_of(payload: dict) -> dict[str, str]:
    with pytest.raises(RequestValidationError) as caught:
        parse_request(payload)
    return caught.value.problems


def test_the_seed_request_with_defaults_is_accepted():
    request = parse_request(VALID)
    assert request.image_config.size == "1792x1024"
    assert request.video_config.duration_s == 8
    assert request.video_dimensions == (1280, 720)


def test_the_stored_form_uses_the_seed_field_names_and_round_trips():
    request = parse_request(
        {**VALID, "imageConfig": {"quality": "hd"}, "videoConfig": {"generateAudio": False}}
    )
    stored = request.to_json()
    assert stored["imageConfig"]["quality"] == "hd"
    assert stored["videoConfig"]["generateAudio"] is False
    assert parse_request(stored) == request


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t "])
def test_an_empty_image_prompt_is_refused_by_name(prompt):
    assert problems_of({**VALID, "imagePrompt": prompt}) == {"imagePrompt": "must not be empty"}


def test_an_image_prompt_over_4000_characters_is_refused():
    problems = problems_of({**VALID, "imagePrompt": "x" * 4001})
    assert "4,000" in problems["imagePrompt"]


def test_a_4000_character_image_prompt_is_accepted():
    assert len(parse_request({**VALID, "imagePrompt": "x" * 4000}).image_prompt) == 4000


def test_unknown_config_values_name_the_field_and_the_choices():
    problems = problems_of({**VALID, "imageConfig": {"size": "512x512", "style": "noir"}})
    assert "1792x1024" in problems["imageConfig.size"]
    assert "vivid" in problems["imageConfig.style"]


def test_unknown_fields_are_refused_rather_than_ignored():
    assert problems_of({**VALID, "videoConfig": {"fps": 60}}) == {
        "videoConfig.fps": "is not a known field"
    }


def test_veo_durations_4_6_and_8_seconds_are_offered_and_others_refused():
    for duration in ("4s", "6s", "8s"):
        assert parse_request({**VALID, "videoConfig": {"duration": duration}})
    assert "videoConfig.duration" in problems_of({**VALID, "videoConfig": {"duration": "10s"}})


def test_control_characters_in_prompts_are_refused():
    assert problems_of({**VALID, "videoPrompt": "dolly\x00in"}) == {
        "videoPrompt": "contains control characters"
    }


def test_a_portrait_image_makes_a_portrait_clip_unless_told_otherwise():
    portrait = {**VALID, "imageConfig": {"size": "1024x1792"}}
    assert parse_request(portrait).video_dimensions == (720, 1280)
    forced = {**portrait, "videoConfig": {"aspectRatio": "16:9", "resolution": "1080p"}}
    assert parse_request(forced).video_dimensions == (1920, 1080)


def test_missing_prompts_are_both_reported():
    assert problems_of({}) == {"imagePrompt": "is required", "videoPrompt": "is required"}


def test_a_run_may_choose_registered_models_and_only_those():
    request = parse_request({**VALID, "videoModel": "fal-ai/veo3.1/fast/image-to-video"})
    assert (request.video_model, request.image_model) == ("fal-ai/veo3.1/fast/image-to-video", None)
    problems = problems_of({**VALID, "imageModel": "midjourney"})
    assert "gpt-image-2" in problems["imageModel"]


def test_a_video_seed_is_optional_and_bounded():
    assert parse_request({**VALID, "videoConfig": {"seed": 42}}).video_config.seed == 42
    assert "videoConfig.seed" in problems_of({**VALID, "videoConfig": {"seed": -1}})
