"""The composition root: `build_providers(settings)` decides real or offline per capability.

A capability goes real when forced (IMAGE_PROVIDER=openai, ...) or, on `auto`, when its key or
bucket is set; otherwise it runs offline. Pages and the orchestrator never construct a client.
"""

from __future__ import annotations

from core.config import Settings
from core.errors import ProviderConfigError
from core.providers.base import ImageGenerator, Moderator, Providers, Storage, VideoGenerator
from core.providers.faults import FaultInjector, with_faults
from core.providers.offline import (
    KeywordModerator,
    LocalStorage,
    OfflineImageGenerator,
    OfflineVideoGenerator,
)


def _choose(choice: str, real: str, has_credentials: bool, setting: str, needs: str) -> str:
    if choice == "auto":
        return real if has_credentials else "offline"
    if choice not in ("offline", "local") and not has_credentials:
        raise ProviderConfigError(f"{setting}={choice} needs {needs} to be set")
    return choice


def image_generator(settings: Settings) -> ImageGenerator:
    kind = _choose(
        settings.image_provider,
        "openai",
        bool(settings.openai_api_key),
        "IMAGE_PROVIDER",
        "OPENAI_API_KEY",
    )
    if kind == "offline":
        return OfflineImageGenerator(latency_s=settings.offline_latency_s)
    from core.providers.openai_images import OpenAIImageGenerator

    return OpenAIImageGenerator(
        api_key=settings.openai_api_key.get_secret_value(),  # type: ignore[union-attr]
        base_url=settings.openai_base_url,
        default_model=settings.image_model,
    )


def moderator(settings: Settings) -> Moderator:
    kind = _choose(
        settings.moderation_provider,
        "openai",
        bool(settings.openai_api_key),
        "MODERATION_PROVIDER",
        "OPENAI_API_KEY",
    )
    if kind == "offline":
        return KeywordModerator(settings.blocklist)
    from core.providers.openai_images import OpenAIModerator

    return OpenAIModerator(
        api_key=settings.openai_api_key.get_secret_value(),  # type: ignore[union-attr]
        base_url=settings.openai_base_url,
        model=settings.moderation_model,
    )


def video_generator(settings: Settings) -> VideoGenerator:
    kind = _choose(
        settings.video_provider, "fal", bool(settings.fal_key), "VIDEO_PROVIDER", "FAL_KEY"
    )
    if kind == "offline":
        return OfflineVideoGenerator(
            job_dir=settings.offline_provider_dir, latency_s=settings.offline_latency_s
        )
    from core.providers.fal_video import FalVideoGenerator

    return FalVideoGenerator(
        key=settings.fal_key.get_secret_value(),  # type: ignore[union-attr]
        default_model=settings.video_model,
        queue_host=settings.fal_queue_run_host,
    )


def storage(settings: Settings) -> Storage:
    kind = _choose(
        settings.storage_backend,
        "s3",
        bool(settings.s3_bucket_name),
        "STORAGE_BACKEND",
        "S3_BUCKET_NAME",
    )
    if kind in ("offline", "local"):
        return LocalStorage(settings.resolved_storage_dir)
    from core.providers.s3_storage import S3Storage

    return S3Storage(
        bucket=settings.s3_bucket_name or "",
        region=settings.s3_region,
        endpoint_url=settings.s3_endpoint_url,
    )


def build_providers(settings: Settings) -> Providers:
    image, video = image_generator(settings), video_generator(settings)
    checker, store = moderator(settings), storage(settings)
    providers = Providers(
        image=image,
        video=video,
        moderator=checker,
        storage=store,
        labels={
            "image": image.name,
            "video": video.name,
            "moderation": checker.name,
            "storage": store.name,
        },
    )
    if settings.fault_transient_rate or settings.fault_permanent_rate or settings.fault_latency_s:
        injector = FaultInjector(
            latency_s=settings.fault_latency_s,
            transient_rate=settings.fault_transient_rate,
            permanent_rate=settings.fault_permanent_rate,
            seed=settings.fault_seed,
        )
        providers = with_faults(providers, injector)
    return providers
