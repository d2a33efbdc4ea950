import pytest

from core.credits import DEFAULT_CREDIT_COSTS, cost_of
from core.schemas import parse_request


def request(image: dict | None = None, video: dict | None = None):
    return parse_request(
        {
            "imagePrompt": "a",
            "videoPrompt": "b",
            "imageConfig": image or {},
            "videoConfig": video or {},
        }
    )


@pytest.mark.parametrize(
    ("image", "video", "expected"),
    [
        # image (standard wide = 3) + 8 s x 720p with audio (2/s)
        ({}, {}, 3 + 16),
        ({"size": "1024x1024"}, {"generateAudio": False}, 2 + 8),
        ({"quality": "hd", "size": "1024x1792"}, {"resolution": "1080p"}, 6 + 24),
        (
            {"quality": "hd", "size": "1024x1024"},
            {"duration": "4s", "resolution": "1080p", "generateAudio": False},
            4 + 8,
        ),
    ],
)
def test_a_run_costs_its_image_plus_its_video_seconds(image, video, expected):
    assert cost_of(request(image, video), DEFAULT_CREDIT_COSTS) == expected
