"""The fault injector and the wrappers that put it in front of any provider."""

from __future__ import annotations

import random
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from core.errors import PermanentProviderError, ProviderError, TransientProviderError
from core.providers.base import ImageSpec, Providers, VideoJobState, VideoSpec
from core.providers.faults import FaultInjector, with_faults
from core.providers.offline import (
    KeywordModerator,
    LocalStorage,
    OfflineImageGenerator,
    OfflineVideoGenerator,
)


def outcome(injector: FaultInjector) -> str:
    try:
        injector.inject("op")
    except TransientProviderError:
        return "transient"
    except PermanentProviderError:
        return "permanent"
    return "ok"


@pytest.mark.parametrize(
    ("rates", "error", "status_code"),
    [
        ({"transient_rate": 1.0}, TransientProviderError, 503),
        ({"permanent_rate": 1.0}, PermanentProviderError, 400),
    ],
)
def test_a_rate_of_one_always_raises_that_kind_of_error(
    rates: dict[str, float], error: type[ProviderError], status_code: int
) -> None:
    injector = FaultInjector(seed=1, **rates)

    for _ in range(50):
        with pytest.raises(error) as caught:
            injector.inject("video.status")
        assert caught.value.status_code == status_code
        assert caught.value.provider == "faults"
        assert "video.status" in str(caught.value)


def test_rates_of_zero_never_raise() -> None:
    injector = FaultInjector(seed=1)

    assert {outcome(injector) for _ in range(2000)} == {"ok"}


def test_rates_hold_over_many_draws() -> None:
    injector = FaultInjector(transient_rate=0.2, permanent_rate=0.1, seed=7)

    counts = Counter(outcome(injector) for _ in range(10_000))

    assert counts["transient"] / 10_000 == pytest.approx(0.2, abs=0.02)
    assert counts["permanent"] / 10_000 == pytest.approx(0.1, abs=0.02)


def test_the_same_seed_gives_the_same_faults() -> None:
    def run(seed: int) -> list[str]:
        injector = FaultInjector(transient_rate=0.3, permanent_rate=0.3, seed=seed)
        return [outcome(injector) for _ in range(200)]

    assert run(5) == run(5)
    assert run(5) != run(6)


def test_threads_share_one_seeded_sequence_without_losing_draws() -> None:
    injector = FaultInjector(transient_rate=0.25, seed=11)
    same_seed = random.Random(11)
    expected = sum(same_seed.random() < 0.25 for _ in range(4000))

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(lambda _: outcome(injector), range(4000)))

    assert outcomes.count("transient") == expected


def test_each_call_waits_the_injected_latency() -> None:
    injector = FaultInjector(latency_s=0.05)
    started = time.monotonic()

    injector.inject("op")

    assert time.monotonic() - started >= 0.05


@pytest.mark.parametrize(
    "arguments",
    [{"latency_s": -1}, {"transient_rate": 1.5}, {"permanent_rate": -0.1}],
)
def test_out_of_range_settings_are_refused(arguments: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        FaultInjector(**arguments)  # type: ignore[arg-type]


def offline_providers(tmp_path: Path) -> Providers:
    return Providers(
        image=OfflineImageGenerator(latency_s=0),
        video=OfflineVideoGenerator(tmp_path / "jobs", latency_s=0),
        moderator=KeywordModerator(("gore",)),
        storage=LocalStorage(tmp_path / "storage"),
        labels={"image": "offline", "storage": "local"},
    )


def test_wrapped_providers_keep_their_names_and_say_faults_are_on(tmp_path: Path) -> None:
    wrapped = with_faults(offline_providers(tmp_path), FaultInjector())

    assert [wrapped.image.name, wrapped.video.name, wrapped.storage.name] == [
        "offline",
        "offline",
        "local",
    ]
    assert wrapped.moderator.name == "offline"
    assert wrapped.labels == {"image": "offline+faults", "storage": "local+faults"}


def test_without_faults_every_call_reaches_the_inner_provider(
    tmp_path: Path, photo_url: str
) -> None:
    wrapped = with_faults(offline_providers(tmp_path), FaultInjector())

    image = wrapped.image.generate(ImageSpec("a fox", 32, 32), timeout_s=5)
    request_id = wrapped.video.submit(VideoSpec("waves", photo_url))
    wrapped.storage.put("a/b.png", image.data, image.content_type)

    assert image.model == "offline-image"
    assert wrapped.video.status(request_id).state is VideoJobState.COMPLETED
    assert wrapped.video.cancel(request_id) is False
    assert [v.flagged for v in wrapped.moderator.moderate(["gore", "calm"])] == [True, False]
    assert wrapped.storage.get("a/b.png") == image.data
    assert wrapped.storage.head("a/b.png") is not None
    assert wrapped.storage.url("a/b.png", expires_s=60).startswith("file://")
    wrapped.storage.delete("a/b.png")
    assert wrapped.storage.head("a/b.png") is None


def test_faults_hit_the_risky_calls_and_spare_cancel_head_delete_and_url(
    tmp_path: Path, photo_url: str
) -> None:
    inner = offline_providers(tmp_path)
    request_id = inner.video.submit(VideoSpec("waves", photo_url))
    inner.storage.put("a/b.png", b"data", "image/png")
    wrapped = with_faults(inner, FaultInjector(permanent_rate=1.0))

    risky = [
        lambda: wrapped.image.generate(ImageSpec("a fox", 32, 32), timeout_s=5),
        lambda: wrapped.video.submit(VideoSpec("waves", photo_url)),
        lambda: wrapped.video.status(request_id),
        lambda: wrapped.video.result(request_id),
        lambda: wrapped.moderator.moderate(["calm"]),
        lambda: wrapped.storage.put("a/c.png", b"data", "image/png"),
        lambda: wrapped.storage.get("a/b.png"),
    ]
    for call in risky:
        with pytest.raises(ProviderError, match="injected permanent fault"):
            call()
    assert wrapped.storage.head("a/c.png") is None  # the faulted put never reached the folder
    assert wrapped.video.cancel(request_id) is False
    assert wrapped.storage.head("a/b.png") is not None
    assert wrapped.storage.url("a/b.png", expires_s=60).startswith("file://")
    wrapped.storage.delete("a/b.png")
