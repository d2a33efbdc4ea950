"""What the pipeline expects a video provider to deliver and to charge (from the catalog)."""

from decimal import Decimal

from core.pipeline import expected_clip, image_list_price
from core.providers.base import ImageSpec
from core.schemas import WorkflowRequest, parse_request

VEO = "fal-ai/veo3.1/image-to-video"


def asked(**video_config) -> WorkflowRequest:
    return parse_request({"imagePrompt": "p", "videoPrompt": "p", "videoConfig": video_config})


def test_offline_renders_exactly_what_was_asked_for_free():
    clip = expected_clip("offline", asked(resolution="1080p", aspectRatio="16:9"), VEO)
    assert (clip.duration_s, clip.dimensions, clip.list_price) == (8, (1920, 1080), Decimal(0))


def test_veo_keeps_the_duration_and_resolution_and_costs_its_list_price():
    clip = expected_clip("fal", asked(generateAudio=True, aspectRatio="16:9"), VEO)
    assert (clip.duration_s, clip.dimensions) == (8, (1280, 720))
    assert clip.list_price == Decimal("3.2")  # 8 s x $0.40 with audio


def test_a_model_without_the_asked_resolution_is_not_held_to_it():
    kling = expected_clip("fal", asked(), "fal-ai/kling-video/v2.5-turbo/pro/image-to-video")
    assert kling.dimensions is None
    assert kling.duration_s == 10  # 8 s snaps to the longer of Kling's 5 and 10


def test_portrait_clips_are_expected_portrait():
    clip = expected_clip("offline", asked(aspectRatio="9:16"), "x")
    assert clip.dimensions == (720, 1280)


def test_an_offline_image_costs_nothing_and_a_real_one_its_mapped_size_price():
    image = ImageSpec(
        prompt="p", width=1024, height=1024, quality="standard", model="gpt-image-1.5"
    )
    assert image_list_price("offline", image) == Decimal(0)
    assert image_list_price("openai", image) > Decimal(0)
