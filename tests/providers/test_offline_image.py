"""The offline image model: a real PNG drawn from the prompt, with a latency and a timeout."""

from __future__ import annotations

import time

import pytest

from core.errors import PermanentProviderError, TransientProviderError
from core.media import probe_image
from core.providers.base import ImageQuality, ImageSpec, ImageStyle
from core.providers.offline import OfflineImageGenerator


def generate(
    prompt: str,
    width: int = 320,
    height: int = 180,
    style: ImageStyle = "vivid",
    quality: ImageQuality = "standard",
) -> bytes:
    spec = ImageSpec(prompt=prompt, width=width, height=height, quality=quality, style=style)
    return OfflineImageGenerator(latency_s=0).generate(spec, timeout_s=5).data


@pytest.mark.parametrize(("width", "height"), [(1792, 1024), (1024, 1792), (64, 48)])
def test_the_image_is_a_png_of_the_asked_size(width: int, height: int) -> None:
    probe = probe_image(generate("a lighthouse at dusk", width, height))

    assert (probe.width, probe.height, probe.format) == (width, height, "PNG")


def test_the_answer_says_what_it_is() -> None:
    spec = ImageSpec(prompt="a fox", width=64, height=64)

    image = OfflineImageGenerator(latency_s=0).generate(spec, timeout_s=5)

    assert (image.content_type, image.model, image.revised_prompt) == (
        "image/png",
        "offline-image",
        None,
    )


def test_the_same_prompt_draws_the_same_picture() -> None:
    assert generate("a red fox in the snow") == generate("a red fox in the snow")


def test_different_prompts_draw_different_pictures() -> None:
    assert generate("a red fox in the snow") != generate("a blue whale at night")


def test_style_and_quality_change_the_picture() -> None:
    standard = generate("a quiet lake", style="vivid", quality="standard")

    assert generate("a quiet lake", style="natural", quality="standard") != standard
    assert generate("a quiet lake", style="vivid", quality="hd") != standard


@pytest.mark.parametrize(
    "prompt",
    [
        "a cat astronaut 🚀🐱 waving 👋🏽",
        "שלום עולם — مرحبا بالعالم — mixed right-to-left text",
        "word " * 2000,
        "x" * 5000,
        "tabs\tnew\nlines\x00nul \ud800 lone surrogate",
        "",
        "   ",
    ],
    ids=["emoji", "rtl", "many-words", "one-huge-word", "control-chars", "empty", "blank"],
)
def test_any_prompt_text_draws_without_crashing(prompt: str) -> None:
    assert probe_image(generate(prompt)).format == "PNG"


@pytest.mark.parametrize(("width", "height"), [(0, 64), (64, -1), (8192, 64)])
def test_a_size_no_model_would_draw_is_a_permanent_error(width: int, height: int) -> None:
    spec = ImageSpec(prompt="a fox", width=width, height=height)

    with pytest.raises(PermanentProviderError, match="not supported"):
        OfflineImageGenerator(latency_s=0).generate(spec, timeout_s=5)


def test_it_waits_its_latency_before_answering() -> None:
    spec = ImageSpec(prompt="a fox", width=64, height=64)
    started = time.monotonic()

    OfflineImageGenerator(latency_s=0.1).generate(spec, timeout_s=5)

    assert time.monotonic() - started >= 0.1


def test_a_latency_beyond_the_timeout_fails_transiently_at_the_timeout() -> None:
    spec = ImageSpec(prompt="a fox", width=64, height=64)
    started = time.monotonic()

    with pytest.raises(TransientProviderError, match="timed out"):
        OfflineImageGenerator(latency_s=10).generate(spec, timeout_s=0.05)

    assert time.monotonic() - started < 1
