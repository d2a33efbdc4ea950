"""Real media, no provider logic: a Ken Burns H.264/AAC clip over a still, a landscape still
drawn from a prompt, and probes that check what a provider (or we) produced.
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import math
import random
import re
import struct
import unicodedata
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from typing import TypeVar

import av
import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, UnidentifiedImageError

MAX_ZOOM = 1.15
AUDIO_RATE = 48_000
_AUDIO_FRAME = 1024  # AAC's frame size; the encoder wants exactly this many samples per frame
_FADE_S = 1.5
_X264_OPTIONS = {"preset": "veryfast", "crf": "23", "tune": "film"}

_T = TypeVar("_T")

# Soft seventh/ninth chords as MIDI notes, low enough to sit under speech without competing.
_CHORDS: tuple[tuple[int, ...], ...] = (
    (48, 55, 59, 64),  # Cmaj7
    (45, 52, 55, 60, 64),  # Am9-ish
    (41, 48, 52, 57),  # Fmaj7
    (50, 57, 60, 65),  # Dm7
    (43, 50, 54, 59),  # Gmaj7
    (40, 47, 50, 55, 59),  # Em9-ish
)


@dataclass(frozen=True)
class VideoProbe:
    width: int
    height: int
    duration_s: float
    has_audio: bool


@dataclass(frozen=True)
class ImageProbe:
    width: int
    height: int
    format: str  # Pillow's name, e.g. "PNG"


def render_clip(
    image: bytes,
    *,
    width: int,
    height: int,
    duration_s: float,
    fps: int = 24,
    with_audio: bool,
    seed: int = 0,
) -> bytes:
    """An MP4 (H.264 yuv420p, optional AAC stereo) of a slow pan/zoom over `image`."""
    if width % 2 or height % 2 or width <= 0 or height <= 0:
        raise ValueError(f"yuv420p needs even, positive dimensions, got {width}x{height}")
    if duration_s <= 0 or fps <= 0:
        raise ValueError(f"duration and fps must be positive, got {duration_s} s at {fps} fps")
    source = _decode_image(image)
    n_frames = max(1, round(duration_s * fps))
    out = io.BytesIO()
    # faststart moves the index to the front so a browser can start playing before the end arrives;
    # an unbounded interleave delta lets us encode all video, then all audio, and still get an
    # interleaved file (the muxer holds packets until it has both streams' timestamps).
    with av.open(
        out,
        "w",
        format="mp4",
        container_options={"movflags": "+faststart", "max_interleave_delta": "0"},
        io_open=lambda _url, _flags, _options: _BufferReader(out),
    ) as box:
        video = box.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = dict(_X264_OPTIONS)
        # Frames are BT.709 limited range (see _KenBurns); say so, or players guess per size.
        context = video.codec_context
        context.colorspace = context.color_primaries = context.color_trc = 1  # AVCOL_*_BT709
        context.color_range = 1  # AVCOL_RANGE_MPEG
        audio = None
        if with_audio:
            audio = box.add_stream("aac", rate=AUDIO_RATE, layout="stereo")
            audio.bit_rate = 128_000
        time_base = Fraction(1, fps)
        motion = _KenBurns(source, width, height, n_frames, seed)
        for index, frame in enumerate(_rendered_ahead(motion.frame, n_frames, ahead=4)):
            frame.pts, frame.time_base = index, time_base
            box.mux(video.encode(frame))
        box.mux(video.encode(None))
        if audio is not None:
            samples = _ambient_pad(round(n_frames / fps * AUDIO_RATE), seed)
            for chunk in _audio_frames(samples):
                box.mux(audio.encode(chunk))
            box.mux(audio.encode(None))
    return out.getvalue()


class _BufferReader(io.RawIOBase):
    """A second, read-only cursor over the output buffer. The muxer's faststart pass reopens its
    output to read the media back while it writes the moved copy, so the two cursors must differ.
    """

    def __init__(self, buffer: io.BytesIO) -> None:
        self._buffer = buffer
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        # Hold the view only for the copy: a live export would make the writer's next resize fail.
        with self._buffer.getbuffer() as view:
            chunk = bytes(view[self._pos : None if size < 0 else self._pos + size])
        self._pos += len(chunk)
        return chunk

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        with self._buffer.getbuffer() as view:
            end = view.nbytes
        self._pos = offset + {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: end}[whence]
        return self._pos

    def tell(self) -> int:
        return self._pos


def probe_video(data: bytes) -> VideoProbe:
    """Size, length and streams of an MP4 clip, read from its index (the `moov` box);
    ValueError when the file is not a whole, indexed clip with a video track.

    Nothing is decoded, nor handed to FFmpeg, whose opening of a clip decodes its first frames
    to learn its streams (~6 ms for a 4 s 720p clip). A decoded frame also proved less than it
    seems: a clip cut short after its first frames decodes them fine. What catches a cut clip is
    that the file is a sequence of boxes that each state their size, and every one must be whole.
    Width and height are the video sample entry's (the coded picture, as a decoder sees it)."""
    top = _boxes(data, 0, len(data))
    if data and not top:
        raise ValueError("not an MP4 file")
    moov = _only(top, b"moov", "video has no index (moov box)")
    inside = _boxes(data, *moov)
    timescale, duration = _movie_header(data, _only(inside, b"mvhd", "video index has no header"))
    handlers = {_handler(data, track): track for track in _all(inside, b"trak")}
    if b"vide" not in handlers:
        raise ValueError("media has no video stream")
    width, height, frames = _video_track(data, handlers[b"vide"])
    if not width or not height or not frames or not timescale:
        raise ValueError("video stream has no frames")
    return VideoProbe(width, height, duration / timescale, has_audio=b"soun" in handlers)


_Box = tuple[int, int]  # a box's payload: (start, end) in the file


def _boxes(data: bytes, start: int, end: int) -> dict[bytes, list[_Box]]:
    """The boxes between `start` and `end` by type: each states its size (32 bits; 1 means a
    64-bit size follows, 0 means "to the end"), and they must tile the span exactly."""
    found: dict[bytes, list[_Box]] = {}
    position = start
    while position < end:
        if end - position < 8:
            raise ValueError("video is cut short inside a box header")
        size, kind = struct.unpack_from(">I4s", data, position)
        header = 8
        if size == 1:
            if end - position < 16:
                raise ValueError("video is cut short inside a box header")
            (size,) = struct.unpack_from(">Q", data, position + 8)
            header = 16
        elif size == 0:
            size = end - position
        if size < header or position + size > end:
            raise ValueError(f"video is cut short: its {kind.decode('latin-1')!r} box is not whole")
        found.setdefault(kind, []).append((position + header, position + size))
        position += size
    return found


def _all(boxes: dict[bytes, list[_Box]], kind: bytes) -> list[_Box]:
    return boxes.get(kind, [])


def _only(boxes: dict[bytes, list[_Box]], kind: bytes, missing: str) -> _Box:
    found = _all(boxes, kind)
    if not found:
        raise ValueError(missing)
    return found[0]


def _child(data: bytes, parent: _Box, *path: bytes) -> _Box:
    box = parent
    for kind in path:
        box = _only(_boxes(data, *box), kind, f"video index has no {kind.decode()} box")
    return box


def _field(data: bytes, box: _Box, offset: int, form: str) -> int:
    start, end = box
    if start + offset + struct.calcsize(form) > end:
        raise ValueError("video index box is too short")
    return struct.unpack_from(form, data, start + offset)[0]


def _movie_header(data: bytes, mvhd: _Box) -> tuple[int, int]:
    """(timescale, duration) of the movie: after version and flags, two creation/modification
    times, then the timescale and the duration, all 32 bits in version 0, times and duration
    64 bits in version 1."""
    if _field(data, mvhd, 0, ">B") == 1:
        return _field(data, mvhd, 20, ">I"), _field(data, mvhd, 24, ">Q")
    return _field(data, mvhd, 12, ">I"), _field(data, mvhd, 16, ">I")


def _handler(data: bytes, track: _Box) -> bytes:
    """The track's kind from mdia/hdlr: b"vide", b"soun", ... (after version, flags and a
    reserved word)."""
    hdlr = _child(data, track, b"mdia", b"hdlr")
    start = hdlr[0] + 8
    return data[start : start + 4]


def _video_track(data: bytes, track: _Box) -> tuple[int, int, int]:
    """(width, height, sample count): the first sample entry of stbl/stsd (after its 8-byte
    header, 6 reserved bytes, the reference index and 16 bytes of pre-defined fields), and
    stbl/stsz's sample count (after version, flags and the common sample size)."""
    table = _child(data, track, b"mdia", b"minf", b"stbl")
    stsd = _child(data, table, b"stsd")
    width = _field(data, stsd, 8 + 32, ">H")
    height = _field(data, stsd, 8 + 34, ">H")
    frames = _field(data, _child(data, table, b"stsz"), 8, ">I")
    return width, height, frames


def probe_image(data: bytes) -> ImageProbe:
    """Size and format of an image; ValueError when it is not a whole, valid image.

    A PNG is checked with verify(): every chunk's CRC, which catches truncation and corruption
    in well under a millisecond, where decoding the pixels costs ~15 ms at 1024x1024. Other
    formats are decoded."""
    try:
        picture = Image.open(io.BytesIO(data))
        size, kind = picture.size, picture.format or ""
        if kind == "PNG":
            picture.verify()
        else:
            picture.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"undecodable image: {exc}") from exc
    return ImageProbe(width=size[0], height=size[1], format=kind)


def _decode_image(data: bytes) -> Image.Image:
    try:
        picture = Image.open(io.BytesIO(data))
        picture.load()  # open() is lazy; a truncated file only fails here
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"undecodable image: {exc}") from exc
    return picture


def _cover(picture: Image.Image, width: int, height: int) -> Image.Image:
    """Crop to the target aspect around the centre, then scale, so no frame ever shows bars."""
    scale = max(width / picture.width, height / picture.height)
    # min(): float rounding can make the crop a hair wider than the picture (1920.0000000000002
    # for a 1920-wide source at a 1.15 zoom), which Pillow refuses as a negative offset.
    crop_w, crop_h = min(width / scale, picture.width), min(height / scale, picture.height)
    left, top = (picture.width - crop_w) / 2, (picture.height - crop_h) / 2
    return picture.resize(
        (width, height), Image.Resampling.BICUBIC, box=(left, top, left + crop_w, top + crop_h)
    )


class _KenBurns:
    """The frames of a slow zoom-in with a drift, each computed independently so they can be
    rendered ahead on worker threads while the encoder works (Pillow resamples without the GIL).
    """

    def __init__(self, picture: Image.Image, width: int, height: int, n_frames: int, seed: int):
        # Scale once to the most-zoomed size, so the last frame maps source pixels 1:1, and convert
        # to YUV once: per frame we only resample the three planes (half the work of RGB, and no
        # per-frame colour conversion). Sub-pixel crop boxes keep the slow motion free of judder.
        rgb = picture.convert("RGB")
        source = _cover(rgb, _even(width * MAX_ZOOM), _even(height * MAX_ZOOM))
        yuv = av.VideoFrame.from_image(source).reformat(format="yuv420p", dst_colorspace="ITU709")
        self._planes = [
            Image.fromarray(np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, : p.width])
            for p in yuv.planes
        ]
        self._size = (width, height)
        self._n_frames = n_frames
        angle = random.Random(seed).uniform(0, 2 * math.pi)
        self._drift = (math.cos(angle), math.sin(angle))

    def frame(self, index: int) -> av.VideoFrame:
        width, height = self._size
        src_w, src_h = self._planes[0].size
        t = index / (self._n_frames - 1) if self._n_frames > 1 else 0.0
        eased = 0.5 - 0.5 * math.cos(math.pi * t)
        zoom = 1.0 + (MAX_ZOOM - 1.0) * eased
        win_w, win_h = src_w / zoom, src_h / zoom
        # Drift the window centre toward one edge, never past it: the offset stays within the slack.
        cx = src_w / 2 + self._drift[0] * (src_w - win_w) / 2
        cy = src_h / 2 + self._drift[1] * (src_h - win_h) / 2
        left, top = cx - win_w / 2, cy - win_h / 2
        packed = np.empty(width * height * 3 // 2, np.uint8)
        offset = 0
        for plane, sub in zip(self._planes, (1, 2, 2), strict=True):
            w, h = width // sub, height // sub
            box = (left / sub, top / sub, (left + win_w) / sub, (top + win_h) / sub)
            scaled = plane.resize((w, h), Image.Resampling.BILINEAR, box=box)
            packed[offset : offset + w * h] = np.asarray(scaled).ravel()
            offset += w * h
        return av.VideoFrame.from_ndarray(packed.reshape(-1, width), format="yuv420p")


def _rendered_ahead(render: Callable[[int], _T], count: int, ahead: int) -> Iterator[_T]:
    """render(0..count-1) in order, keeping `ahead` calls in flight on two worker threads."""
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="media") as pool:
        pending: deque[Future[_T]] = deque()
        for index in range(count):
            pending.append(pool.submit(render, index))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _even(size: float) -> int:
    return 2 * round(size / 2)


def _ambient_pad(n_samples: int, seed: int) -> np.ndarray:
    """A quiet stereo chord: detuned sine partials under a slow swell, faded in and out."""
    rng = random.Random(seed)
    chord = _CHORDS[rng.randrange(len(_CHORDS))]
    t = np.arange(n_samples, dtype=np.float64) / AUDIO_RATE
    left = np.zeros(n_samples)
    right = np.zeros(n_samples)
    for note in chord:
        freq = 440.0 * 2 ** ((note - 69) / 12)
        # Each partial breathes at its own slow rate; a small L/R detune makes the pad wide.
        swell = 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.05, 0.2) * t + rng.uniform(0, 6.3))
        left += swell * np.sin(2 * np.pi * freq * t)
        right += swell * np.sin(2 * np.pi * freq * 1.003 * t + 0.5)
    fade = np.minimum(1.0, np.minimum(t, t[-1] - t) / _FADE_S)
    stereo = np.stack([left, right]) * fade
    peak = float(np.abs(stereo).max()) or 1.0
    return (stereo * (0.25 / peak)).astype(np.float32)


def _audio_frames(samples: np.ndarray) -> Iterator[av.AudioFrame]:
    time_base = Fraction(1, AUDIO_RATE)
    for start in range(0, samples.shape[1], _AUDIO_FRAME):
        chunk = np.ascontiguousarray(samples[:, start : start + _AUDIO_FRAME])
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = AUDIO_RATE, start, time_base
        yield frame


# Stills ----------------------------------------------------------------------------------------

_RGB = tuple[int, int, int]
_Font = ImageFont.FreeTypeFont | ImageFont.ImageFont  # the latter only without FreeType
_Tint = tuple[float, float, float, float]  # hue from, hue to, saturation, brightness (HSV)


# Each mood's sky top, horizon and ground, as (hue from, hue to, saturation, brightness).
_PALETTES: dict[str, tuple[_Tint, _Tint, _Tint]] = {
    "dusk": ((0.68, 0.78, 0.6, 0.38), (0.02, 0.1, 0.6, 1.0), (0.75, 0.9, 0.45, 0.2)),
    "night": ((0.62, 0.68, 0.7, 0.12), (0.58, 0.66, 0.5, 0.36), (0.6, 0.7, 0.5, 0.08)),
    "dawn": ((0.55, 0.62, 0.4, 0.62), (0.08, 0.14, 0.35, 1.0), (0.55, 0.7, 0.35, 0.26)),
    "day": ((0.56, 0.62, 0.55, 0.85), (0.5, 0.56, 0.22, 1.0), (0.22, 0.4, 0.5, 0.3)),
}
# Words that ask for a mood; the first mood matched wins, otherwise the prompt's hash picks one.
_MOOD_WORDS = {
    "dusk": re.compile(r"\b(sunset|dusk|evening|twilight|golden hour)\b", re.IGNORECASE),
    "night": re.compile(r"\b(night|moon\w*|stars?|starry|midnight|space)\b", re.IGNORECASE),
    "dawn": re.compile(r"\b(sunrise|dawn|morning|mist\w*|fog\w*)\b", re.IGNORECASE),
    "day": re.compile(r"\b(noon|sunny|daylight|summer|beach)\b", re.IGNORECASE),
}


def paint_scene(prompt: str, *, width: int, height: int, vivid: bool, detailed: bool) -> bytes:
    """A PNG landscape whose mood, palette and layout come from the prompt (same prompt, same
    picture), with the prompt in a caption band so a viewer sees what was asked for."""
    rng = random.Random(hashlib.sha256(prompt.encode("utf-8", "replace")).digest())
    mood = next((m for m, words in _MOOD_WORDS.items() if words.search(prompt)), None)
    mood = mood or rng.choice(sorted(_PALETTES))
    night = mood == "night"
    sky, horizon_tint, ground_tint = _PALETTES[mood]
    horizon = _tint(horizon_tint, rng)
    picture = _sky_gradient(width, height, _tint(sky, rng), horizon)
    picture.alpha_composite(_soft_sky(width, height, rng, night, detailed))
    draw = ImageDraw.Draw(picture)
    if night:
        for _ in range(400 if detailed else 150):
            x, y = rng.uniform(0, width), rng.uniform(0, height * 0.6) ** 1.1
            glint = rng.randint(90, 255)
            draw.point((x, y), fill=(glint, glint, round(glint * 0.94)))
    # Far ridges take the haze of the horizon and near ones the ground colour: depth by air alone.
    ground = _tint(ground_tint, rng)
    layers = rng.randint(5, 6) if detailed else rng.randint(3, 4)
    for depth in range(1, layers + 1):
        share = depth / layers
        ridge = _ridge(width, height, height * (0.45 + 0.4 * share), rng, detailed)
        draw.polygon(ridge, fill=_mix(horizon, ground, share**0.7))
    finished = _grade(picture.convert("RGB"), rng, saturation=1.3 if vivid else 0.8)
    _caption(finished, prompt)
    out = io.BytesIO()
    finished.save(out, "PNG", compress_level=3)  # a few % larger than level 6, several times faster
    return out.getvalue()


def _tint(tint: _Tint, rng: random.Random) -> _RGB:
    hue_from, hue_to, saturation, value = tint
    r, g, b = colorsys.hsv_to_rgb(rng.uniform(hue_from, hue_to) % 1.0, saturation, value)
    return round(r * 255), round(g * 255), round(b * 255)


def _mix(a: _RGB, b: _RGB, t: float) -> _RGB:
    red, green, blue = (round(x + (y - x) * t) for x, y in zip(a, b, strict=True))
    return red, green, blue


def _sky_gradient(width: int, height: int, top: _RGB, horizon: _RGB) -> Image.Image:
    # One column, stretched: the same gradient as per-pixel maths at a fraction of the cost.
    t = np.clip(np.linspace(0.0, 1.0, height) / 0.65, 0.0, 1.0)[:, None, None] ** 1.4
    column = np.array(top) + (np.array(horizon) - np.array(top)) * t
    strip = Image.fromarray(column.astype(np.uint8), "RGB").resize((width, height))
    return strip.convert("RGBA")


def _soft_sky(
    width: int, height: int, rng: random.Random, night: bool, detailed: bool
) -> Image.Image:
    """Sun or moon with its glow, and clouds: drawn at a quarter size, blurred, scaled up, which
    is both cheap and exactly as soft as they should look."""
    w, h = max(1, width // 4), max(1, height // 4)
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.15, 0.4) * h
    radius = rng.uniform(0.04, 0.07) * min(w, h) * (0.7 if night else 1.0)
    glow = (255, 244, 214) if night else (255, 226, 160)
    draw.ellipse(_disc(cx, cy, radius * 4), fill=(*glow, 70))
    layer = layer.filter(ImageFilter.GaussianBlur(radius * 2))
    draw = ImageDraw.Draw(layer)
    draw.ellipse(_disc(cx, cy, radius), fill=(*glow, 245))
    clouds = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(clouds)
    for _ in range(rng.randint(5, 8) if detailed else rng.randint(2, 4)):
        x, y, size = rng.uniform(0, w), rng.uniform(0.05, 0.45) * h, rng.uniform(0.05, 0.12) * w
        for _ in range(5):  # a cloud is a few overlapping puffs, not one ellipse
            px, py = x + rng.uniform(-1.5, 1.5) * size, y + rng.uniform(-0.2, 0.2) * size
            draw.ellipse(_disc(px, py, size * rng.uniform(0.4, 0.8), 0.4), fill=(255, 255, 255, 40))
    layer.alpha_composite(clouds.filter(ImageFilter.GaussianBlur(max(1.0, w / 200))))
    return layer.filter(ImageFilter.GaussianBlur(1)).resize(
        (width, height), Image.Resampling.BICUBIC
    )


def _disc(cx: float, cy: float, radius: float, squash: float = 1.0) -> tuple[float, ...]:
    return (cx - radius, cy - radius * squash, cx + radius, cy + radius * squash)


def _ridge(
    width: int, height: int, base_y: float, rng: random.Random, detailed: bool
) -> list[tuple[float, float]]:
    waves = [(rng.uniform(0.5, 3.5), rng.uniform(0, 2 * math.pi), rng.random()) for _ in range(3)]
    amplitude = height * rng.uniform(0.03, 0.08)
    roughness = height * (0.006 if detailed else 0.002)
    steps = 160 if detailed else 80
    points = [(0.0, float(height))]
    for i in range(steps + 1):
        x = i / steps
        lift = sum(
            weight * math.sin(2 * math.pi * freq * x + phase) for freq, phase, weight in waves
        )
        points.append((x * width, base_y - amplitude * lift + rng.uniform(-1, 1) * roughness))
    points.append((float(width), float(height)))
    return points


def _grade(picture: Image.Image, rng: random.Random, *, saturation: float) -> Image.Image:
    """Saturation for the style, then a vignette and film grain so flat fills read as a photo."""
    picture = ImageEnhance.Color(picture).enhance(saturation)
    width, height = picture.size
    ys, xs = np.ogrid[-1.0 : 1.0 : complex(0, height), -1.0 : 1.0 : complex(0, width)]
    vignette = (1.0 - 0.28 * (xs**2 + ys**2) / 2.0).astype(np.float32)
    noise = np.random.default_rng(rng.getrandbits(64)).normal(0.0, 2.5, (height, width))
    pixels = np.asarray(picture, np.float32) * vignette[..., None] + noise[..., None]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def _caption(picture: Image.Image, prompt: str) -> None:
    """The prompt, wrapped to at most three lines, on a translucent band at the bottom."""
    # Drop control characters and symbols (emoji): the built-in font has no glyphs for them.
    text = "".join(c if unicodedata.category(c)[0] not in "CS" else " " for c in prompt)
    text = " ".join(text.split())
    if not text:
        return
    width, height = picture.size
    size = max(10, min(width, height) // 36)
    font = ImageFont.load_default(size=size)
    lines = _wrap(text, font, width - 2 * size, max_lines=3)
    line_h = round(size * 1.3)
    band = Image.new("RGBA", (width, line_h * len(lines) + size), (0, 0, 0, 110))
    draw = ImageDraw.Draw(band)
    for i, line in enumerate(lines):
        draw.text((size, size // 2 + i * line_h), line, font=font, fill=(255, 255, 255, 235))
    picture.paste(band, (0, height - band.height), band)


def _wrap(text: str, font: _Font, max_width: float, max_lines: int) -> list[str]:
    """Greedy wrap at spaces; a word wider than a line is cut; what does not fit ends in '…'."""
    lines: list[str] = []
    rest = text
    while rest and len(lines) < max_lines:
        cut = _fitting(rest, font, max_width)
        space = rest.rfind(" ", 0, cut + 1)
        if cut < len(rest) and space > 0:
            cut = space
        lines.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest:
        last = lines[-1]
        lines[-1] = last[: _fitting(last, font, max_width - font.getlength("…"))].rstrip() + "…"
    return lines


def _fitting(text: str, font: _Font, max_width: float) -> int:
    """How many leading characters of `text` fit in `max_width` (at least one), by bisection."""
    low, high = 1, len(text)
    while low < high:
        mid = (low + high + 1) // 2
        if font.getlength(text[:mid]) <= max_width:
            low = mid
        else:
            high = mid - 1
    return low
