"""The model registries: which image and video models we offer, what each accepts, how our
request vocabulary maps onto its arguments, and list prices for the monitoring page.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from core.errors import UnknownModelError
from core.providers.base import ImageSpec, VideoSpec

DEFAULT_IMAGE_MODEL = "gpt-image-2"
DEFAULT_VIDEO_MODEL = "fal-ai/veo3.1/image-to-video"

# Our (the seed's) sizes: square, landscape and portrait.
SEED_SIZES = ("1024x1024", "1792x1024", "1024x1792")
_SQUARE_PIXELS = 1024 * 1024


# ---------------------------------------------------------------------------------------------
# Image models


@dataclass(frozen=True)
class ImageModel:
    key: str
    label: str
    family: Literal["gpt-image", "dall-e"]
    sizes: tuple[str, ...]  # the exact sizes it takes; see `free_size` for gpt-image-2
    prompt_max_chars: int
    quality_map: Mapping[str, str]  # our quality (standard|hd) -> the model's
    # USD per image at 1024x1024 by model quality; `size_prices` overrides exact sizes.
    square_usd: Mapping[str, float]
    size_prices: Mapping[tuple[str, str], float] = field(default_factory=dict)
    takes_style: bool = False
    takes_response_format: bool = False
    free_size: bool = False  # any WxH on a 16 px grid within the limits below
    legacy: bool = False  # retired by OpenAI; only for endpoints that still serve it


_GPT_QUALITY = MappingProxyType({"standard": "medium", "hd": "high"})
_GPT_1X_SIZES = ("1024x1024", "1536x1024", "1024x1536")

# gpt-image-2 free-size limits (openai 3.54.0 docstrings): both sides multiples of 16, aspect
# between 1:3 and 3:1, at most 3840x2160 (read as: long side <= 3840, short side <= 2160).
_FREE_GRID = 16
_FREE_MAX_LONG, _FREE_MAX_SHORT = 3840, 2160
_FREE_MAX_RATIO = 3.0

IMAGE_MODELS: Mapping[str, ImageModel] = MappingProxyType(
    {
        m.key: m
        for m in (
            ImageModel(
                key="gpt-image-2",
                label="GPT Image 2",
                family="gpt-image",
                sizes=_GPT_1X_SIZES,
                free_size=True,
                prompt_max_chars=32_000,
                quality_map=_GPT_QUALITY,
                # UNCONFIRMED: no per-image list price for gpt-image-2 in the reference; these are
                # gpt-image-1's published prices, a deliberate upper-side placeholder.
                square_usd=MappingProxyType({"low": 0.011, "medium": 0.042, "high": 0.167}),
            ),
            ImageModel(
                key="gpt-image-1.5",
                label="GPT Image 1.5",
                family="gpt-image",
                sizes=_GPT_1X_SIZES,
                prompt_max_chars=32_000,
                quality_map=_GPT_QUALITY,
                # UNCONFIRMED: third-party figures (docs.apiyi.com, runware.ai).
                square_usd=MappingProxyType({"low": 0.009, "medium": 0.034, "high": 0.133}),
                size_prices=MappingProxyType(
                    {
                        ("low", "1536x1024"): 0.013,
                        ("medium", "1536x1024"): 0.05,
                        ("high", "1536x1024"): 0.20,
                    }
                ),
            ),
            ImageModel(
                key="gpt-image-1-mini",
                label="GPT Image 1 mini",
                family="gpt-image",
                sizes=_GPT_1X_SIZES,
                prompt_max_chars=32_000,
                quality_map=_GPT_QUALITY,
                square_usd=MappingProxyType({"low": 0.005, "medium": 0.011, "high": 0.036}),
                size_prices=MappingProxyType(
                    {
                        ("low", "1536x1024"): 0.006,
                        ("medium", "1536x1024"): 0.015,
                        ("high", "1536x1024"): 0.052,
                    }
                ),
            ),
            ImageModel(
                key="dall-e-3",
                label="DALL·E 3 (legacy)",
                family="dall-e",
                sizes=SEED_SIZES,
                prompt_max_chars=4_000,
                quality_map=MappingProxyType({"standard": "standard", "hd": "hd"}),
                square_usd=MappingProxyType({"standard": 0.040, "hd": 0.080}),
                size_prices=MappingProxyType(
                    {
                        ("standard", "1792x1024"): 0.080,
                        ("hd", "1792x1024"): 0.120,
                    }
                ),
                takes_style=True,
                takes_response_format=True,
                legacy=True,
            ),
        )
    }
)

# GPT image models have no `style`; the seed's style becomes a short prompt suffix instead.
STYLE_SUFFIX = MappingProxyType(
    {
        "vivid": "Style: vivid — saturated colour, dramatic light, hyper-real detail.",
        "natural": "Style: natural — true-to-life colour, soft light, photographic realism.",
    }
)


def image_model(key: str | None) -> ImageModel:
    try:
        return IMAGE_MODELS[key or DEFAULT_IMAGE_MODEL]
    except KeyError:
        known = ", ".join(IMAGE_MODELS)
        raise UnknownModelError(f"unknown image model {key!r} (known: {known})") from None


def image_size(model: ImageModel, width: int, height: int) -> tuple[int, int]:
    """The size to request: ours as-is when the model takes it, else the nearest allowed one with
    the same orientation (landscape stays landscape: 1792x1024 -> 1536x1024 on gpt-image-1.x)."""
    if model.free_size:
        return _free_size(width, height)
    allowed = [_parse_size(s) for s in model.sizes]
    if (width, height) in allowed:
        return width, height
    same = [wh for wh in allowed if _orientation(*wh) == _orientation(width, height)] or allowed
    ratio = math.log(width / height)
    return min(
        same,
        key=lambda wh: (abs(math.log(wh[0] / wh[1]) - ratio), abs(wh[0] * wh[1] - width * height)),
    )


def _free_size(width: int, height: int) -> tuple[int, int]:
    # gpt-image-2 takes our seed sizes unchanged (1792 and 1024 are multiples of 16, 1.75:1 is
    # inside 3:1), which keeps the still closest to the 16:9 clip it becomes. Other sizes are
    # clamped into the documented limits and snapped to the 16 px grid.
    long_side, short_side = max(width, height), min(width, height)
    short_side = max(short_side, math.ceil(long_side / _FREE_MAX_RATIO))
    scale = min(1.0, _FREE_MAX_LONG / long_side, _FREE_MAX_SHORT / short_side)
    long_side, short_side = _snap(long_side * scale), _snap(short_side * scale)
    return (long_side, short_side) if width >= height else (short_side, long_side)


def _snap(value: float) -> int:
    return max(_FREE_GRID, int(value / _FREE_GRID + 0.5) * _FREE_GRID)


def _parse_size(size: str) -> tuple[int, int]:
    w, h = size.split("x")
    return int(w), int(h)


def _orientation(width: int, height: int) -> int:
    return (width > height) - (width < height)


@dataclass(frozen=True)
class ImageRequest:
    """Keyword arguments for `client.images.generate`, plus what they resolved to."""

    arguments: dict[str, Any]
    width: int
    height: int
    quality: str  # in the model's vocabulary


def image_request(spec: ImageSpec) -> ImageRequest:
    """Map our ImageSpec onto one model's request; raises UnknownModelError or ValueError."""
    model = image_model(spec.model)
    width, height = image_size(model, spec.width, spec.height)
    quality = model.quality_map[spec.quality]
    prompt = spec.prompt
    if len(prompt) > model.prompt_max_chars:
        raise ValueError(
            f"prompt is {len(prompt):,} characters; {model.key} takes at most "
            f"{model.prompt_max_chars:,}"
        )
    arguments: dict[str, Any] = {
        "model": model.key,
        "n": 1,
        "size": f"{width}x{height}",
        "quality": quality,
    }
    if model.takes_style:
        arguments["style"] = spec.style
    else:
        suffixed = f"{prompt}\n\n{STYLE_SUFFIX[spec.style]}"
        # The suffix is a nicety: drop it rather than push a valid prompt over the limit.
        if len(suffixed) <= model.prompt_max_chars:
            prompt = suffixed
    if model.takes_response_format:
        # dall-e-3 answers with a 60-minute URL by default; ask for the bytes instead.
        arguments["response_format"] = "b64_json"
    arguments["prompt"] = prompt
    return ImageRequest(arguments=arguments, width=width, height=height, quality=quality)


def estimate_image_usd(model: str | None, quality: str, width: int, height: int) -> float:
    """List price of one image. `quality` may be ours (standard|hd) or the model's (low|medium|
    high); sizes without a published price scale the square price by pixel count, which is how
    the published GPT image prices relate (1536x1024 costs 1.5x 1024x1024)."""
    m = image_model(model)
    q = m.quality_map.get(quality, quality)
    if q not in m.square_usd:
        raise ValueError(f"{m.key} has no quality {quality!r}")
    # Prices are listed per orientation-agnostic size: 1024x1536 costs what 1536x1024 does.
    key = f"{max(width, height)}x{min(width, height)}"
    if (q, key) in m.size_prices:
        return m.size_prices[(q, key)]
    return round(m.square_usd[q] * width * height / _SQUARE_PIXELS, 4)


# ---------------------------------------------------------------------------------------------
# Video models on fal


@dataclass(frozen=True)
class VideoPrice:
    """fal list price: per second by (resolution, audio), one flat rate per second, or a block of
    `block_s` seconds plus a rate per second beyond it (Kling)."""

    per_second: Mapping[tuple[str, bool], float] = field(default_factory=dict)
    flat_per_s: float = 0.0
    block_s: int = 0
    block_usd: float = 0.0
    extra_per_s: float = 0.0

    def usd(self, duration_s: int, resolution: str, audio: bool) -> float:
        if self.block_s:
            return round(self.block_usd + max(0, duration_s - self.block_s) * self.extra_per_s, 4)
        if not self.per_second:
            return round(self.flat_per_s * duration_s, 4)
        try:
            return round(self.per_second[(resolution, audio)] * duration_s, 4)
        except KeyError:
            raise ValueError(f"no price for {resolution} (audio={audio})") from None


@dataclass(frozen=True)
class VideoModel:
    endpoint: str  # the fal endpoint id, e.g. "fal-ai/veo3.1/image-to-video"
    label: str
    durations_s: tuple[int, ...]
    resolutions: tuple[str, ...]
    audio: bool  # can it generate a soundtrack
    price: VideoPrice
    to_arguments: Callable[[VideoSpec, int], dict[str, Any]]  # (spec, effective duration)
    aspect_ratios: tuple[str, ...] = ("16:9", "9:16")


def _veo_arguments(spec: VideoSpec, duration_s: int) -> dict[str, Any]:
    args: dict[str, Any] = {
        "prompt": spec.prompt,
        "image_url": spec.image_url,
        "duration": f"{duration_s}s",  # VEO wants "4s" | "6s" | "8s", strings
        "resolution": spec.resolution,
        "aspect_ratio": spec.aspect_ratio,
        "generate_audio": spec.generate_audio,
    }
    if spec.negative_prompt:
        args["negative_prompt"] = spec.negative_prompt
    if spec.seed is not None:
        args["seed"] = spec.seed
    return args


def _kling_arguments(spec: VideoSpec, duration_s: int) -> dict[str, Any]:
    # Kling takes its framing from the image and has no resolution, audio or seed inputs.
    args: dict[str, Any] = {
        "prompt": spec.prompt,
        "image_url": spec.image_url,
        "duration": str(duration_s),  # "5" | "10"
    }
    if spec.negative_prompt:
        args["negative_prompt"] = spec.negative_prompt
    return args


def _hailuo_arguments(spec: VideoSpec, duration_s: int) -> dict[str, Any]:
    # Hailuo standard renders 768p from the image's framing; no audio, negative prompt or seed.
    return {"prompt": spec.prompt, "image_url": spec.image_url, "duration": str(duration_s)}


_VEO_DURATIONS = (4, 6, 8)

VIDEO_MODELS: Mapping[str, VideoModel] = MappingProxyType(
    {
        m.endpoint: m
        for m in (
            VideoModel(
                endpoint="fal-ai/veo3.1/image-to-video",
                label="Google VEO 3.1",
                durations_s=_VEO_DURATIONS,
                resolutions=("720p", "1080p", "4k"),
                audio=True,
                price=VideoPrice(
                    per_second=MappingProxyType(
                        {
                            ("720p", False): 0.20,
                            ("720p", True): 0.40,
                            ("1080p", False): 0.20,
                            ("1080p", True): 0.40,
                            ("4k", False): 0.40,
                            ("4k", True): 0.60,
                        }
                    )
                ),
                to_arguments=_veo_arguments,
            ),
            VideoModel(
                endpoint="fal-ai/veo3.1/fast/image-to-video",
                label="Google VEO 3.1 Fast",
                durations_s=_VEO_DURATIONS,
                resolutions=("720p", "1080p", "4k"),
                audio=True,
                price=VideoPrice(
                    per_second=MappingProxyType(
                        {
                            ("720p", False): 0.10,
                            ("720p", True): 0.15,
                            ("1080p", False): 0.10,
                            ("1080p", True): 0.15,
                            ("4k", False): 0.30,
                            ("4k", True): 0.35,
                        }
                    )
                ),
                to_arguments=_veo_arguments,
            ),
            VideoModel(
                endpoint="fal-ai/veo3.1/lite/image-to-video",
                label="Google VEO 3.1 Lite",
                durations_s=_VEO_DURATIONS,
                # UNCONFIRMED: the reference only prices 720p/1080p for lite, so no 4k here.
                resolutions=("720p", "1080p"),
                audio=True,
                price=VideoPrice(
                    per_second=MappingProxyType(
                        {
                            ("720p", False): 0.03,
                            ("720p", True): 0.05,
                            ("1080p", False): 0.05,
                            ("1080p", True): 0.08,
                        }
                    )
                ),
                to_arguments=_veo_arguments,
            ),
            VideoModel(
                endpoint="fal-ai/kling-video/v2.5-turbo/pro/image-to-video",
                label="Kling 2.5 Turbo Pro",
                durations_s=(5, 10),
                resolutions=("1080p",),
                audio=False,
                price=VideoPrice(block_s=5, block_usd=0.35, extra_per_s=0.07),
                to_arguments=_kling_arguments,
            ),
            VideoModel(
                endpoint="fal-ai/minimax/hailuo-2.3/standard/image-to-video",
                label="MiniMax Hailuo 2.3",
                durations_s=(6, 10),
                resolutions=("768p",),
                audio=False,
                # UNCONFIRMED: ~$0.045/s is a third-party figure.
                price=VideoPrice(flat_per_s=0.045),
                to_arguments=_hailuo_arguments,
            ),
        )
    }
)


def video_model(endpoint: str | None) -> VideoModel:
    try:
        return VIDEO_MODELS[endpoint or DEFAULT_VIDEO_MODEL]
    except KeyError:
        known = ", ".join(VIDEO_MODELS)
        raise UnknownModelError(f"unknown video model {endpoint!r} (known: {known})") from None


def effective_duration_s(model: VideoModel, duration_s: int) -> int:
    """The allowed duration nearest to the one asked for; a tie goes to the longer clip so the
    user never gets less motion than they asked for (8 s on Hailuo -> 10 s)."""
    return min(model.durations_s, key=lambda d: (abs(d - duration_s), -d))


def video_arguments(spec: VideoSpec) -> dict[str, Any]:
    """The JSON arguments for the spec's model (or the default); raises UnknownModelError."""
    model = video_model(spec.model)
    return model.to_arguments(spec, effective_duration_s(model, spec.duration_s))


def estimate_video_usd(model: str | None, duration_s: int, resolution: str, audio: bool) -> float:
    """List price of one clip, after snapping the duration to what the model renders. Audio costs
    nothing on models that cannot make it; flat-priced models ignore the resolution."""
    m = video_model(model)
    return m.price.usd(effective_duration_s(m, duration_s), resolution, audio and m.audio)
