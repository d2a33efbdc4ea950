"""OpenAIImageGenerator and OpenAIModerator, through the real openai SDK, against its twin."""

from __future__ import annotations

import base64
import io
import time

import pytest
from PIL import Image

from core.errors import FailureCategory, PermanentProviderError, TransientProviderError
from core.providers.base import ImageSpec, ModerationVerdict
from core.providers.catalog import STYLE_SUFFIX
from core.providers.openai_images import OpenAIImageGenerator, OpenAIModerator
from tests.twins.base import Fault
from tests.twins.openai_twin import CONTENT_POLICY_DALLE, CONTENT_POLICY_GPT, OpenAITwin, make_png


def generator(twin: OpenAITwin, key: str | None = None) -> OpenAIImageGenerator:
    return OpenAIImageGenerator(twin.api_key if key is None else key, base_url=twin.base_url)


def size_of(data: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(data)).size


def image_bodies(twin: OpenAITwin) -> list[dict]:
    return [r.json for r in twin.recorded("POST", "/v1/images/generations")]


def test_gpt_image_2_returns_a_png_at_the_seed_size(openai_twin):
    spec = ImageSpec("a lighthouse at dusk", 1792, 1024, quality="hd", style="vivid")

    image = generator(openai_twin).generate(spec, timeout_s=10)

    assert (image.content_type, image.model, image.revised_prompt) == (
        "image/png",
        "gpt-image-2",
        None,
    )
    assert size_of(image.data) == (1792, 1024)
    assert image_bodies(openai_twin) == [
        {
            "model": "gpt-image-2",
            "prompt": f"a lighthouse at dusk\n\n{STYLE_SUFFIX['vivid']}",
            "n": 1,
            "size": "1792x1024",
            "quality": "high",
        }
    ]
    request = openai_twin.requests[0]
    assert request.headers["authorization"] == f"Bearer {openai_twin.api_key}"
    assert request.headers["x-stainless-read-timeout"] == "10"


def test_gpt_image_1_5_gets_the_nearest_landscape_size_and_medium_quality(openai_twin):
    spec = ImageSpec("a lighthouse", 1792, 1024, quality="standard", model="gpt-image-1.5")

    image = generator(openai_twin).generate(spec, timeout_s=10)

    assert size_of(image.data) == (1536, 1024)
    (body,) = image_bodies(openai_twin)
    assert (body["size"], body["quality"]) == ("1536x1024", "medium")
    assert "style" not in body and "response_format" not in body


def test_default_model_comes_from_the_adapter_when_the_spec_names_none(openai_twin):
    adapter = OpenAIImageGenerator(
        openai_twin.api_key, base_url=openai_twin.base_url, default_model="gpt-image-1-mini"
    )
    image = adapter.generate(ImageSpec("a fox", 1024, 1024), timeout_s=10)
    assert image.model == "gpt-image-1-mini"
    assert image_bodies(openai_twin)[0]["model"] == "gpt-image-1-mini"


def test_dall_e_3_legacy_sends_style_asks_for_bytes_and_keeps_the_revised_prompt(openai_twin):
    spec = ImageSpec("a lighthouse", 1024, 1792, quality="hd", style="natural", model="dall-e-3")

    image = generator(openai_twin).generate(spec, timeout_s=10)

    assert image.revised_prompt == "A natural rendering of: a lighthouse"
    assert size_of(image.data) == (1024, 1792)
    assert image_bodies(openai_twin) == [
        {
            "model": "dall-e-3",
            "prompt": "a lighthouse",
            "n": 1,
            "size": "1024x1792",
            "quality": "hd",
            "style": "natural",
            "response_format": "b64_json",
        }
    ]


def test_an_endpoint_that_answers_with_a_url_is_downloaded(openai_twin):
    png = make_png(1024, 1024, "served")
    openai_twin.files["served.png"] = png
    answer = {
        "created": 1,
        "data": [{"url": f"{openai_twin.origin}/files/served.png", "revised_prompt": "r"}],
    }
    openai_twin.faults.push("images", Fault(200, answer))

    image = generator(openai_twin).generate(
        ImageSpec("x", 1024, 1024, model="dall-e-3"), timeout_s=10
    )

    assert (image.data, image.revised_prompt) == (png, "r")


def test_base_url_falls_back_to_openai_base_url(openai_twin, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", openai_twin.base_url)
    image = OpenAIImageGenerator(openai_twin.api_key).generate(
        ImageSpec("x", 1024, 1024), timeout_s=10
    )
    assert image.content_type == "image/png"


def test_rate_limit_is_transient_with_retry_after_and_is_tried_exactly_once(openai_twin):
    openai_twin.fail_next("images", 429, retry_after=1)

    with pytest.raises(TransientProviderError) as caught:
        generator(openai_twin).generate(ImageSpec("x", 1024, 1024), timeout_s=10)

    assert caught.value.retry_after_s == 1.0
    assert (caught.value.status_code, caught.value.code) == (429, "rate_limit_exceeded")
    # max_retries=0: the SDK made one attempt and left the waiting to our tenacity policy.
    assert len(openai_twin.requests) == 1
    assert openai_twin.requests[0].headers["x-stainless-retry-count"] == "0"


def test_retry_after_ms_wins_over_retry_after(openai_twin):
    openai_twin.fail_next("images", 429, retry_after=30, retry_after_ms=250)
    with pytest.raises(TransientProviderError) as caught:
        generator(openai_twin).generate(ImageSpec("x", 1024, 1024), timeout_s=10)
    assert caught.value.retry_after_s == 0.25


@pytest.mark.parametrize("status", [500, 503])
def test_server_errors_are_transient(openai_twin, status):
    openai_twin.fail_next("images", status)
    with pytest.raises(TransientProviderError) as caught:
        generator(openai_twin).generate(ImageSpec("x", 1024, 1024), timeout_s=10)
    assert caught.value.status_code == status
    assert caught.value.category is FailureCategory.PROVIDER_UNAVAILABLE


def test_a_dropped_connection_is_transient(openai_twin):
    openai_twin.fail_next("images", drop=True)
    with pytest.raises(TransientProviderError, match="could not reach OpenAI"):
        generator(openai_twin).generate(ImageSpec("x", 1024, 1024), timeout_s=10)


def test_a_slow_answer_times_out_as_transient_within_the_callers_timeout(openai_twin):
    openai_twin.fail_next("images", delay_s=2.0)
    started = time.monotonic()
    with pytest.raises(TransientProviderError, match="timed out"):
        generator(openai_twin).generate(ImageSpec("x", 1024, 1024), timeout_s=0.3)
    assert time.monotonic() - started < 1.5


def test_an_empty_balance_429_is_permanent(openai_twin):
    openai_twin.fail_next(
        "images", 429, code="insufficient_quota", message="You exceeded your current quota."
    )
    with pytest.raises(PermanentProviderError, match="current quota"):
        generator(openai_twin).generate(ImageSpec("x", 1024, 1024), timeout_s=10)


def test_gpt_image_safety_block_is_a_content_policy_failure_with_openais_words(openai_twin):
    with pytest.raises(PermanentProviderError) as caught:
        generator(openai_twin).generate(ImageSpec("a gore scene", 1024, 1024), timeout_s=10)
    assert caught.value.category is FailureCategory.CONTENT_POLICY
    assert caught.value.message == CONTENT_POLICY_GPT
    assert (caught.value.status_code, caught.value.code) == (400, "moderation_blocked")


def test_dall_e_safety_block_is_a_content_policy_failure(openai_twin):
    openai_twin.reject_next_for_content_policy("dall-e")
    with pytest.raises(PermanentProviderError) as caught:
        generator(openai_twin).generate(ImageSpec("x", 1024, 1024, model="dall-e-3"), timeout_s=10)
    assert caught.value.category is FailureCategory.CONTENT_POLICY
    assert caught.value.message == CONTENT_POLICY_DALLE
    assert caught.value.code == "content_policy_violation"


def test_a_wrong_key_is_an_auth_failure_naming_openai_api_key(openai_twin):
    with pytest.raises(PermanentProviderError) as caught:
        generator(openai_twin, key="sk-wrong-key").generate(
            ImageSpec("x", 1024, 1024), timeout_s=10
        )
    assert caught.value.category is FailureCategory.PROVIDER_AUTH
    assert caught.value.status_code == 401
    assert "OPENAI_API_KEY" in caught.value.message
    assert "Incorrect API key provided" in caught.value.message


def test_an_empty_key_is_an_auth_failure_without_a_request(openai_twin, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(PermanentProviderError) as caught:
        generator(openai_twin, key="").generate(ImageSpec("x", 1024, 1024), timeout_s=10)
    assert caught.value.category is FailureCategory.PROVIDER_AUTH
    assert "OPENAI_API_KEY" in caught.value.message
    assert openai_twin.requests == []


def test_a_retired_model_is_a_permanent_rejection(openai_twin):
    openai_twin.retired_models.add("dall-e-3")
    with pytest.raises(PermanentProviderError) as caught:
        generator(openai_twin).generate(ImageSpec("x", 1024, 1024, model="dall-e-3"), timeout_s=10)
    assert caught.value.category is FailureCategory.PROVIDER_REJECTED
    assert (caught.value.status_code, caught.value.code) == (404, "model_not_found")


def test_a_prompt_over_the_model_limit_fails_before_any_request(openai_twin):
    with pytest.raises(PermanentProviderError) as caught:
        generator(openai_twin).generate(
            ImageSpec("x" * 4001, 1024, 1024, model="dall-e-3"), timeout_s=10
        )
    assert caught.value.category is FailureCategory.INVALID_REQUEST
    assert openai_twin.requests == []


def test_constructing_an_adapter_does_no_io(openai_twin):
    OpenAIImageGenerator(openai_twin.api_key, base_url=openai_twin.base_url)
    OpenAIModerator(openai_twin.api_key, base_url=openai_twin.base_url)
    assert openai_twin.requests == []


def moderator(twin: OpenAITwin) -> OpenAIModerator:
    return OpenAIModerator(twin.api_key, base_url=twin.base_url)


def test_moderation_gives_one_verdict_per_text_from_one_call(openai_twin):
    verdicts = moderator(openai_twin).moderate(["a calm lake at dawn", "a gore-soaked massacre"])

    assert verdicts == [
        ModerationVerdict(flagged=False),
        ModerationVerdict(flagged=True, categories=("violence", "violence/graphic")),
    ]
    (request,) = openai_twin.recorded("POST", "/v1/moderations")
    assert request.json == {
        "model": "omni-moderation-latest",
        "input": ["a calm lake at dawn", "a gore-soaked massacre"],
    }


def test_moderation_uses_the_apis_category_names(openai_twin):
    openai_twin.flagged_terms = {"hurt myself": "self-harm/intent", "slur": "hate/threatening"}
    (verdict,) = moderator(openai_twin).moderate(["I want to hurt myself, slur"])
    assert verdict.categories == ("hate/threatening", "self-harm/intent")


def test_moderating_nothing_makes_no_call(openai_twin):
    assert moderator(openai_twin).moderate([]) == []
    assert openai_twin.requests == []


def test_moderation_errors_are_translated_too(openai_twin):
    openai_twin.fail_next("moderations", 429, retry_after=2)
    with pytest.raises(TransientProviderError) as caught:
        moderator(openai_twin).moderate(["hello"])
    assert caught.value.retry_after_s == 2.0
    with pytest.raises(PermanentProviderError) as auth:
        OpenAIModerator("sk-nope", base_url=openai_twin.base_url).moderate(["hello"])
    assert auth.value.category is FailureCategory.PROVIDER_AUTH


def test_the_twin_refuses_what_the_real_api_refuses(openai_twin):
    # Guards the twin itself: legacy parameters on a GPT image model are a 400.
    import openai

    client = openai.OpenAI(
        api_key=openai_twin.api_key, base_url=openai_twin.base_url, max_retries=0
    )
    with pytest.raises(openai.BadRequestError, match="Unknown parameter: 'style'"):
        client.images.generate(model="gpt-image-1.5", prompt="x", style="vivid")
    with pytest.raises(openai.BadRequestError, match="Supported values"):
        client.images.generate(model="gpt-image-1.5", prompt="x", size="1792x1024")
    ok = client.images.generate(model="gpt-image-2", prompt="x", size="1280x720")
    assert size_of(base64.b64decode(ok.data[0].b64_json)) == (1280, 720)


# -- check(): what health calls ----------------------------------------------------------------


def test_image_check_retrieves_the_default_model_and_nothing_is_generated(openai_twin):
    assert generator(openai_twin).check() == "openai: gpt-image-2 reachable"
    (request,) = openai_twin.requests
    assert (request.method, request.path) == ("GET", "/v1/models/gpt-image-2")
    assert request.headers["authorization"] == f"Bearer {openai_twin.api_key}"


def test_image_check_with_a_wrong_key_is_an_auth_failure_naming_openai_api_key(openai_twin):
    with pytest.raises(PermanentProviderError) as caught:
        generator(openai_twin, key="sk-wrong-key").check()
    assert caught.value.category is FailureCategory.PROVIDER_AUTH
    assert caught.value.status_code == 401
    assert "check OPENAI_API_KEY" in caught.value.message


def test_image_check_for_a_model_the_key_cannot_use_names_image_model(openai_twin):
    openai_twin.retired_models.add("gpt-image-2")
    with pytest.raises(PermanentProviderError) as caught:
        generator(openai_twin).check()
    assert caught.value.category is FailureCategory.PROVIDER_REJECTED
    assert "check IMAGE_MODEL" in caught.value.message


def test_image_check_when_openai_is_down_is_transient(openai_twin):
    openai_twin.fail_next("models", 503)
    with pytest.raises(TransientProviderError):
        generator(openai_twin).check()


def test_moderator_check_is_a_single_free_one_word_moderation(openai_twin):
    moderator = OpenAIModerator(openai_twin.api_key, base_url=openai_twin.base_url)
    assert moderator.check() == "openai: omni-moderation-latest reachable"
    assert [r.json for r in openai_twin.recorded("POST", "/v1/moderations")] == [
        {"model": "omni-moderation-latest", "input": "ok"}
    ]


def test_moderator_check_with_a_wrong_key_names_openai_api_key(openai_twin):
    with pytest.raises(PermanentProviderError) as caught:
        OpenAIModerator("sk-wrong", base_url=openai_twin.base_url).check()
    assert caught.value.category is FailureCategory.PROVIDER_AUTH
    assert "OPENAI_API_KEY" in caught.value.message


def test_the_twin_lists_models_for_a_valid_key_only(openai_twin):
    import openai

    client = openai.OpenAI(api_key=openai_twin.api_key, base_url=openai_twin.base_url)
    listed = {m.id for m in client.models.list()}
    assert {"gpt-image-2", "dall-e-3", "omni-moderation-latest"} <= listed
    wrong = openai.OpenAI(api_key="sk-nope", base_url=openai_twin.base_url, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
