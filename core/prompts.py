"""Video-oriented prompt building: the still is written as a first frame, the video prompt as a
shot description, and the create page's builder composes a prompt from a few choices."""

from __future__ import annotations

from dataclasses import dataclass

from core.schemas import IMAGE_PROMPT_MAX_CHARS, VIDEO_PROMPT_MAX_CHARS

FIRST_FRAME_GUIDANCE = (
    "Composed as the opening frame of a cinematic video shot: one clear subject, "
    "depth and room for motion, natural perspective, no text, no captions, no borders."
)
STYLE_GUIDANCE = {
    "vivid": "Vivid, saturated colours and dramatic light.",
    "natural": "Natural, true-to-life colours and soft light.",
}

CAMERA_MOVEMENTS = (
    "static shot",
    "slow dolly in",
    "slow dolly out",
    "pan left",
    "pan right",
    "tilt up",
    "tilt down",
    "orbit around the subject",
    "crane up",
    "handheld follow",
    "drone flyover",
)
SHOT_TYPES = (
    "extreme wide shot",
    "wide shot",
    "medium shot",
    "close-up",
    "extreme close-up",
    "over-the-shoulder shot",
    "low angle",
    "high angle",
)
LIGHTING = (
    "golden hour",
    "blue hour",
    "soft overcast light",
    "hard midday sun",
    "neon night",
    "candlelight",
    "studio lighting",
    "moonlight",
)
MOODS = ("serene", "epic", "mysterious", "joyful", "melancholic", "tense", "dreamlike")
PACES = ("very slow", "slow", "moderate", "fast")


def _fit(base: str, extra: str, limit: int) -> str:
    """`base` plus `extra` when both fit in `limit`; the user's own words are never cut."""
    combined = f"{base.rstrip('. ')}. {extra}"
    return combined if len(combined) <= limit else base


def first_frame_prompt(image_prompt: str, style: str | None = None) -> str:
    """The image prompt as sent to the image model: the user's words first, then guidance that
    makes the still work as the first frame of a clip."""
    guidance = FIRST_FRAME_GUIDANCE
    if style in STYLE_GUIDANCE:
        guidance = f"{guidance} {STYLE_GUIDANCE[style]}"
    return _fit(image_prompt, guidance, IMAGE_PROMPT_MAX_CHARS)


def motion_prompt(video_prompt: str) -> str:
    """The video prompt as sent to the video model: motion is anchored on the given first frame."""
    return _fit(
        video_prompt,
        "Animate the provided image as the first frame; keep subject and composition consistent, "
        "smooth continuous motion.",
        VIDEO_PROMPT_MAX_CHARS,
    )


@dataclass(frozen=True)
class ShotChoices:
    subject_action: str
    camera: str = "slow dolly in"
    shot: str = "wide shot"
    lighting: str = "golden hour"
    mood: str = "serene"
    pace: str = "slow"


def build_video_prompt(choices: ShotChoices) -> str:
    """Compose a shot description from the builder's choices (the user can still edit it)."""
    action = choices.subject_action.strip().rstrip(".")
    parts = [
        f"{choices.shot.capitalize()}, {choices.camera}",
        action,
        f"{choices.lighting}, {choices.mood} mood",
        f"{choices.pace} pacing",
    ]
    return ". ".join(p[:1].upper() + p[1:] for p in parts if p) + "."


def varying_parts(texts: list[str]) -> list[str]:
    """What differs between prompts that share a start and an end (the runs of one batch),
    word by word: ["A. Golden hour, calm.", "A. Blue hour, calm."] -> ["Golden", "Blue"].
    Empty strings when all are the same."""
    words = [t.split() for t in texts]
    if len(words) < 2 or all(w == words[0] for w in words):
        return [""] * len(texts)
    shortest = min(len(w) for w in words)
    head = next((i for i in range(shortest) if len({w[i] for w in words}) > 1), shortest)
    tail = next(
        (i for i in range(shortest - head) if len({w[len(w) - 1 - i] for w in words}) > 1),
        shortest - head,
    )
    return [" ".join(w[head : len(w) - tail]) for w in words]
