"""The model registries: request mapping and list prices, as pure functions."""

from __future__ import annotations

from dataclasses import replace

import pytest

from core.errors import UnknownModelError
from core.providers.base import ImageSpec, VideoSpec
from core.providers.catalog import (
    IMAGE_MODELS,
    STYLE_SUFFIX,
    VIDEO_MODELS,
    effective_duration_s,
    estimate_image_usd,
    estimate_video_usd,
    image_model,
    image_request,
    image_size,
    video_arguments,
    video_model,
)
from core.providers.retry_after import retry_after_s


@pytest.mark.parametrize(
    ("model", "asked", "sent"),
    [
        ("gpt-image-2", (1792, 1024), (1792, 1024)),
        ("gpt-image-2", (1024, 1792), (1024, 1792)),
        ("gpt-image-2", (1024, 1024), (1024, 1024)),
        ("gpt-image-1.5", (1792, 1024), (1536, 1024)),
        ("gpt-image-1.5", (1024, 1792), (1024, 1536)),
        ("gpt-image-1-mini", (1024, 1024), (1024, 1024)),
        ("dall-e-3", (1792, 1024), (1792, 1024)),
        ("dall-e-3", (1024, 1792), (1024, 1792)),
    ],
)
def test_seed_sizes_map_to_the_nearest_size_with_the_same_orientation(model, asked, sent):
    assert image_size(image_model(model), *asked) == sent


def test_gpt_image_2_snaps_odd_sizes_into_its_limits():
    model = image_model("gpt-image-2")
    assert image_size(model, 1000, 1000) == (1008, 1008)
    width, height = image_size(model, 6000, 1000)  # too long and too thin
    assert width <= 3840 and width / height <= 3 and width % 16 == height % 16 == 0


def test_gpt_image_models_get_quality_mapped_and_style_as_a_prompt_suffix():
    request = image_request(ImageSpec("a lighthouse", 1792, 1024, quality="hd", style="natural"))
    assert request.arguments == {
        "model": "gpt-image-2",
        "n": 1,
        "size": "1792x1024",
        "quality": "high",
        "prompt": f"a lighthouse\n\n{STYLE_SUFFIX['natural']}",
    }
    standard = image_request(ImageSpec("x", 1024, 1024, model="gpt-image-1.5"))
    assert standard.arguments["quality"] == "medium"


def test_dall_e_3_gets_its_legacy_parameters_and_asks_for_bytes():
    request = image_request(ImageSpec("a lighthouse", 1024, 1792, "hd", "vivid", model="dall-e-3"))
    assert request.arguments == {
        "model": "dall-e-3",
        "n": 1,
        "size": "1024x1792",
        "quality": "hd",
        "style": "vivid",
        "response_format": "b64_json",
        "prompt": "a lighthouse",
    }


def test_prompt_limits_are_enforced_and_the_style_suffix_never_breaks_them():
    with pytest.raises(ValueError, match="at most 4,000"):
        image_request(ImageSpec("x" * 4001, 1024, 1024, model="dall-e-3"))
    at_limit = image_request(ImageSpec("x" * 32_000, 1024, 1024))
    assert at_limit.arguments["prompt"] == "x" * 32_000


def test_unknown_models_are_refused_by_name():
    with pytest.raises(UnknownModelError, match="dall-e-2"):
        image_model("dall-e-2")
    with pytest.raises(UnknownModelError, match="fal-ai/veo3/image-to-video"):
        video_model("fal-ai/veo3/image-to-video")


def test_registries_have_the_agreed_models_and_defaults():
    assert list(IMAGE_MODELS) == ["gpt-image-2", "gpt-image-1.5", "gpt-image-1-mini", "dall-e-3"]
    assert image_model(None).key == "gpt-image-2" and IMAGE_MODELS["dall-e-3"].legacy
    assert video_model(None).endpoint == "fal-ai/veo3.1/image-to-video"
    assert len(VIDEO_MODELS) == 5


SPEC = VideoSpec(
    prompt="waves roll in",
    image_url="https://bucket.example/still.png",
    duration_s=6,
    resolution="1080p",
    aspect_ratio="9:16",
    generate_audio=False,
    negative_prompt="blur",
    seed=7,
)


def test_veo_arguments_use_string_durations_with_an_s():
    assert video_arguments(SPEC) == {
        "prompt": "waves roll in",
        "image_url": "https://bucket.example/still.png",
        "duration": "6s",
        "resolution": "1080p",
        "aspect_ratio": "9:16",
        "generate_audio": False,
        "negative_prompt": "blur",
        "seed": 7,
    }


def test_kling_and_hailuo_get_bare_number_durations_and_only_their_own_fields():
    kling = video_arguments(replace(SPEC, model="fal-ai/kling-video/v2.5-turbo/pro/image-to-video"))
    assert kling == {
        "prompt": "waves roll in",
        "image_url": "https://bucket.example/still.png",
        "duration": "5",
        "negative_prompt": "blur",
    }
    hailuo_id = "fal-ai/minimax/hailuo-2.3/standard/image-to-video"
    assert video_arguments(replace(SPEC, model=hailuo_id))["duration"] == "6"


@pytest.mark.parametrize(
    ("endpoint", "asked", "rendered"),
    [
        ("fal-ai/veo3.1/image-to-video", 8, 8),
        ("fal-ai/veo3.1/image-to-video", 5, 6),  # tie between 4 and 6 goes longer
        ("fal-ai/kling-video/v2.5-turbo/pro/image-to-video", 8, 10),
        ("fal-ai/minimax/hailuo-2.3/standard/image-to-video", 4, 6),
    ],
)
def test_durations_snap_to_what_the_model_renders(endpoint, asked, rendered):
    assert effective_duration_s(video_model(endpoint), asked) == rendered


@pytest.mark.parametrize(
    ("endpoint", "seconds", "resolution", "audio", "usd"),
    [
        ("fal-ai/veo3.1/image-to-video", 8, "1080p", True, 3.20),
        ("fal-ai/veo3.1/image-to-video", 8, "720p", False, 1.60),
        ("fal-ai/veo3.1/fast/image-to-video", 8, "1080p", True, 1.20),
        ("fal-ai/veo3.1/lite/image-to-video", 8, "720p", False, 0.24),
        ("fal-ai/veo3.1/lite/image-to-video", 4, "1080p", True, 0.32),
        ("fal-ai/kling-video/v2.5-turbo/pro/image-to-video", 5, "720p", True, 0.35),
        ("fal-ai/kling-video/v2.5-turbo/pro/image-to-video", 10, "1080p", False, 0.70),
        ("fal-ai/minimax/hailuo-2.3/standard/image-to-video", 6, "720p", True, 0.27),
    ],
)
def test_video_list_prices(endpoint, seconds, resolution, audio, usd):
    assert estimate_video_usd(endpoint, seconds, resolution, audio) == pytest.approx(usd)


@pytest.mark.parametrize(
    ("model", "quality", "size", "usd"),
    [
        ("dall-e-3", "standard", (1024, 1024), 0.04),
        ("dall-e-3", "hd", (1024, 1792), 0.12),
        ("gpt-image-1.5", "standard", (1536, 1024), 0.05),
        ("gpt-image-1-mini", "high", (1024, 1536), 0.052),
        ("gpt-image-1-mini", "low", (1024, 1024), 0.005),
        ("gpt-image-2", "hd", (1792, 1024), 0.167 * 1.75),  # pixel-scaled from the square price
    ],
)
def test_image_list_prices(model, quality, size, usd):
    assert estimate_image_usd(model, quality, *size) == pytest.approx(usd, abs=1e-4)


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"Retry-After": "3"}, 3.0),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),  # a date in the past
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_hints_are_read_from_either_header(headers, seconds):
    assert retry_after_s(headers) == seconds
