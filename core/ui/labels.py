"""What the create form shows for each choice the engine offers (the choices themselves, and the
rules on them, live in `core.launch` and `core.providers.catalog`)."""

from __future__ import annotations

from core.providers import catalog

SIZE_LABELS = {
    "1792x1024": "Landscape · 1792×1024",
    "1024x1024": "Square · 1024×1024",
    "1024x1792": "Portrait · 1024×1792",
}
ASPECT_LABELS = {"auto": "Follow the image", "16:9": "16:9 landscape", "9:16": "9:16 portrait"}
IMAGE_MODEL_LABELS: dict[str, str] = {key: m.label for key, m in catalog.IMAGE_MODELS.items()}
VIDEO_MODEL_LABELS: dict[str, str] = {key: m.label for key, m in catalog.VIDEO_MODELS.items()}
VARIATION_LABELS: dict[str, str] = {
    "takes": "New takes of the same prompts",
    "camera": "Vary the camera movement",
    "shot": "Vary the shot type",
    "lighting": "Vary the lighting",
    "mood": "Vary the mood",
}
WEBHOOK_EVENT_LABELS: dict[str, str] = {
    "started": "Run started",
    "step": "Each step's start and end",
    "completed": "Run ended (completed, failed or cancelled)",
}
