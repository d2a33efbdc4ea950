"""Fault injection around any provider set, for tests, load runs and demos: extra latency and
seeded transient/permanent failures before the calls that cost money or can fail for real.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar

from core.errors import PermanentProviderError, TransientProviderError
from core.providers.base import (
    GeneratedImage,
    GeneratedVideo,
    ImageGenerator,
    ImageSpec,
    ModerationVerdict,
    Moderator,
    Providers,
    Storage,
    StoredObject,
    VideoGenerator,
    VideoJobStatus,
    VideoSpec,
)

_PROVIDER = "faults"


class FaultInjector:
    """One draw per call decides: transient with probability `transient_rate`, else permanent with
    probability `permanent_rate` (transient wins where the two add up past 1), else nothing. The
    seeded sequence is reproducible, and a lock keeps it so when many threads draw."""

    def __init__(
        self,
        latency_s: float = 0.0,
        transient_rate: float = 0.0,
        permanent_rate: float = 0.0,
        seed: int | None = None,
    ) -> None:
        if latency_s < 0 or not (0 <= transient_rate <= 1 and 0 <= permanent_rate <= 1):
            raise ValueError("latency must be >= 0 and rates within 0..1")
        self.latency_s = latency_s
        self.transient_rate = transient_rate
        self.permanent_rate = permanent_rate
        self._random = random.Random(seed)
        self._lock = threading.Lock()

    def inject(self, operation: str) -> None:
        if self.latency_s:
            time.sleep(self.latency_s)
        with self._lock:
            draw = self._random.random()
        if draw < self.transient_rate:
            raise TransientProviderError(
                f"injected transient fault in {operation}", provider=_PROVIDER, status_code=503
            )
        if draw < self.transient_rate + self.permanent_rate:
            raise PermanentProviderError(
                f"injected permanent fault in {operation}", provider=_PROVIDER, status_code=400
            )


class _Named(Protocol):
    name: str


_Inner = TypeVar("_Inner", bound=_Named)


class _Faulty(Generic[_Inner]):
    """Delegates to `inner` under the same name, so records and labels still say who served."""

    def __init__(self, inner: _Inner, injector: FaultInjector) -> None:
        self.inner = inner
        self.injector = injector
        self.name = inner.name

    def check(self) -> str:
        # Health asks the real provider behind the faults; injecting here would only mislead.
        return self.inner.check()  # type: ignore[attr-defined]


class FaultyImageGenerator(_Faulty[ImageGenerator]):
    def generate(self, spec: ImageSpec, *, timeout_s: float) -> GeneratedImage:
        self.injector.inject("image.generate")
        return self.inner.generate(spec, timeout_s=timeout_s)


class FaultyVideoGenerator(_Faulty[VideoGenerator]):
    def submit(self, spec: VideoSpec) -> str:
        self.injector.inject("video.submit")
        return self.inner.submit(spec)

    def status(self, request_id: str) -> VideoJobStatus:
        self.injector.inject("video.status")
        return self.inner.status(request_id)

    def result(self, request_id: str) -> GeneratedVideo:
        self.injector.inject("video.result")
        return self.inner.result(request_id)

    def cancel(self, request_id: str) -> bool:
        # Not faulted, by design: a user's cancel must work in demos and load runs too, and it is
        # best-effort at the provider anyway.
        return self.inner.cancel(request_id)


class FaultyModerator(_Faulty[Moderator]):
    def moderate(self, texts: Sequence[str]) -> list[ModerationVerdict]:
        self.injector.inject("moderation.moderate")
        return self.inner.moderate(texts)


class FaultyStorage(_Faulty[Storage]):
    def put(self, key: str, data: bytes, content_type: str) -> None:
        self.injector.inject("storage.put")
        self.inner.put(key, data, content_type)

    def get(self, key: str) -> bytes:
        self.injector.inject("storage.get")
        return self.inner.get(key)

    def head(self, key: str) -> StoredObject | None:
        return self.inner.head(key)

    def copy(self, source_key: str, key: str) -> None:
        self.injector.inject("storage.copy")
        self.inner.copy(source_key, key)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def url(self, key: str, *, expires_s: int) -> str:
        return self.inner.url(key, expires_s=expires_s)


def with_faults(providers: Providers, injector: FaultInjector) -> Providers:
    """The same providers behind one shared injector; labels gain "+faults" so pages say so."""
    return dataclasses.replace(
        providers,
        image=FaultyImageGenerator(providers.image, injector),
        video=FaultyVideoGenerator(providers.video, injector),
        moderator=FaultyModerator(providers.moderator, injector),
        storage=FaultyStorage(providers.storage, injector),
        labels={capability: f"{label}+faults" for capability, label in providers.labels.items()},
    )
