"""render_clip and the probes, checked by decoding what they produce with PyAV."""

from __future__ import annotations

import io
from collections.abc import Callable

import av
import numpy as np
import pytest
from PIL import Image

from core.media import probe_image, probe_video, render_clip


def decoded_frames(clip: bytes) -> list[np.ndarray]:
    with av.open(io.BytesIO(clip), "r") as box:
        return [frame.to_ndarray(format="rgb24") for frame in box.decode(video=0)]


def audio_seconds(clip: bytes) -> float:
    with av.open(io.BytesIO(clip), "r") as box:
        stream = box.streams.audio[0]
        return sum(frame.samples for frame in box.decode(stream)) / stream.sample_rate


@pytest.fixture(scope="module")
def clip_720p(photo: bytes) -> bytes:
    return render_clip(photo, width=1280, height=720, duration_s=8, with_audio=True, seed=1)


def test_an_8_second_720p_clip_is_h264_at_exactly_that_size_and_length(clip_720p: bytes) -> None:
    probe = probe_video(clip_720p)

    assert (probe.width, probe.height) == (1280, 720)
    assert probe.duration_s == pytest.approx(8, abs=0.05)
    assert probe.has_audio
    with av.open(io.BytesIO(clip_720p), "r") as box:
        video = box.streams.video[0]
        assert (video.codec_context.name, video.codec_context.pix_fmt) == ("h264", "yuv420p")
        assert (video.average_rate, video.frames) == (24, 192)


def test_the_audio_track_is_stereo_aac_as_long_as_the_video(clip_720p: bytes) -> None:
    with av.open(io.BytesIO(clip_720p), "r") as box:
        stream = box.streams.audio[0]
        assert stream.codec_context.name == "aac"
        assert stream.layout.nb_channels == 2
    assert audio_seconds(clip_720p) == pytest.approx(8, abs=0.1)


def test_the_camera_moves_between_the_first_and_the_last_frame(clip_720p: bytes) -> None:
    frames = decoded_frames(clip_720p)

    first, middle, last = (frames[i].astype(np.int16) for i in (0, len(frames) // 2, -1))
    assert np.abs(first - middle).mean() > 5
    assert np.abs(middle - last).mean() > 5


def test_the_index_comes_before_the_media_so_browsers_can_start_playing_early(
    clip_720p: bytes,
) -> None:
    assert 0 < clip_720p.find(b"moov") < clip_720p.find(b"mdat")


@pytest.mark.slow
def test_an_8_second_1080p_clip_has_exactly_that_size_and_length(photo: bytes) -> None:
    clip = render_clip(photo, width=1920, height=1080, duration_s=8, with_audio=True)

    probe = probe_video(clip)
    assert (probe.width, probe.height) == (1920, 1080)
    assert probe.duration_s == pytest.approx(8, abs=0.05)
    assert probe.has_audio


def test_a_portrait_clip_keeps_the_portrait_size(photo: bytes) -> None:
    clip = render_clip(photo, width=720, height=1280, duration_s=1, with_audio=False)

    probe = probe_video(clip)
    assert (probe.width, probe.height) == (720, 1280)


@pytest.mark.parametrize("seconds", [4, 6])
def test_shorter_clips_last_as_long_as_asked(photo: bytes, seconds: int) -> None:
    clip = render_clip(photo, width=320, height=180, duration_s=seconds, with_audio=True)

    assert probe_video(clip).duration_s == pytest.approx(seconds, abs=0.05)
    assert audio_seconds(clip) == pytest.approx(seconds, abs=0.1)


def test_a_clip_without_audio_has_no_audio_stream(photo: bytes) -> None:
    clip = render_clip(photo, width=320, height=180, duration_s=2, with_audio=False)

    assert not probe_video(clip).has_audio


def test_a_picture_of_another_shape_is_cropped_to_fill_the_frame_without_bars(
    make_photo: Callable[[int, int], bytes],
) -> None:
    square = make_photo(400, 400)
    clip = render_clip(square, width=640, height=360, duration_s=1, with_audio=False)

    for frame in decoded_frames(clip):
        # The photo has nothing darker than 50; a letterbox or pillarbox would be near 0.
        edges = np.concatenate([frame[0], frame[-1], frame[:, 0], frame[:, -1]])
        assert edges.max(axis=1).min() > 30


def test_the_seed_picks_the_direction_of_the_drift(photo: bytes) -> None:
    def last_frame(seed: int) -> np.ndarray:
        clip = render_clip(photo, width=320, height=180, duration_s=1, with_audio=False, seed=seed)
        return decoded_frames(clip)[-1].astype(np.int16)

    assert np.abs(last_frame(1) - last_frame(1)).mean() < 1
    assert np.abs(last_frame(1) - last_frame(2)).mean() > 5


@pytest.mark.parametrize(
    ("width", "height", "seconds"), [(321, 180, 1), (320, 0, 1), (320, 180, 0)]
)
def test_render_clip_refuses_sizes_and_lengths_it_cannot_encode(
    photo: bytes, width: int, height: int, seconds: float
) -> None:
    with pytest.raises(ValueError):
        render_clip(photo, width=width, height=height, duration_s=seconds, with_audio=False)


@pytest.mark.parametrize("data", [b"", b"not a video at all", b"\x00" * 4096])
def test_probe_video_refuses_garbage_with_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        probe_video(data)


def test_probe_video_refuses_a_clip_cut_short_before_its_index(clip_720p: bytes) -> None:
    with pytest.raises(ValueError):
        probe_video(clip_720p[:200])


def test_probe_video_refuses_a_clip_cut_short_inside_its_media(clip_720p: bytes) -> None:
    # The index sits in front of the media, so a clip cut anywhere in its media keeps a whole
    # index and still decodes its first frames: only the box sizes give the cut away.
    cut = clip_720p[: len(clip_720p) - 1000]
    with av.open(io.BytesIO(cut)) as box:
        assert next(box.decode(video=0)).width == 1280

    with pytest.raises(ValueError, match="cut short"):
        probe_video(cut)


def test_probe_video_refuses_a_clip_with_bytes_appended(clip_720p: bytes) -> None:
    with pytest.raises(ValueError, match="cut short"):
        probe_video(clip_720p + b"\x00\x00\x01\x00junk")


def test_probe_image_reads_size_and_format(photo: bytes) -> None:
    probe = probe_image(photo)

    assert (probe.width, probe.height, probe.format) == (640, 360, "PNG")


@pytest.mark.parametrize(
    "data", [b"", b"GIF89a but not really", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64]
)
def test_probe_image_refuses_garbage_with_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        probe_image(data)


def test_probe_image_refuses_a_truncated_png(photo: bytes) -> None:
    with pytest.raises(ValueError):
        probe_image(photo[: len(photo) // 2])


def test_a_source_exactly_the_size_of_the_clip_renders():
    # 1920 x 1.15 / 1.15 rounds past 1920: the crop must still stay inside the picture.
    picture = Image.new("RGB", (1920, 1080), (40, 90, 160))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    clip = render_clip(
        buffer.getvalue(), width=1920, height=1080, duration_s=1, fps=8, with_audio=False
    )
    assert (probe_video(clip).width, probe_video(clip).height) == (1920, 1080)
