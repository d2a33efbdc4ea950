"""Reusing a still already paid for (core.reuse), on SQLite and Postgres with the offline
providers: a reused still costs nothing and makes no image call, a still gone from storage is
generated again and charged, a batch of camera variations pays for one still, and only the
same user's identical image request reuses. The ledger invariant is checked after each."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import select

from core import budgets, launch, workflows
from core.clock import utcnow
from core.credits import DEFAULT_CREDIT_COSTS, cost_of, image_cost_of
from core.errors import PermanentProviderError
from core.executor import InlineExecutor, ThreadExecutor
from core.models import ApiCall, CreditTransaction
from core.providers import build_providers
from core.reuse import ReuseOffer
from core.runtime import Runtime
from core.schemas import parse_request
from core.states import StepName, WorkflowStatus
from core.views import monitoring
from core.views.monitoring import MonitoringFilter
from core.views.watch import receipt_for, still_reused
from tests.helpers import balance, load, wait_for

FOX = {
    "imagePrompt": "a red fox in fresh snow",
    "videoPrompt": "slow dolly in, snow falling",
    "imageConfig": {"size": "1024x1024"},
    "videoConfig": {"duration": "4s", "generateAudio": False},
}
REQUEST = parse_request(FOX)
COST = cost_of(REQUEST, DEFAULT_CREDIT_COSTS)
STILL = image_cost_of(REQUEST, DEFAULT_CREDIT_COSTS)


class OneClipVideo:
    """The offline video provider, encoding its clip once per test session: every later job
    finds that clip where the provider keeps its result, so it does not encode again. Every
    test here asks for the same clip (4 s, 720p, 16:9, silent), and finalize still checks it."""

    clip: bytes | None = None

    def __init__(self, inner) -> None:
        self._inner = inner
        self.name = inner.name

    def result(self, request_id: str):
        made = self._inner.job_dir / request_id / "video.mp4"
        if OneClipVideo.clip is not None and not made.exists():
            made.write_bytes(OneClipVideo.clip)
        video = self._inner.result(request_id)
        OneClipVideo.clip = OneClipVideo.clip or made.read_bytes()
        return video

    def __getattr__(self, name: str):
        return getattr(self._inner, name)


def engine(settings, executor=None) -> Runtime:
    providers = build_providers(settings)
    providers = replace(providers, video=OneClipVideo(providers.video))
    return Runtime(
        settings, upgrade=False, executor=executor or InlineExecutor(), providers=providers
    )


@pytest.fixture
def runtime(settings) -> Iterator[Runtime]:
    built = engine(settings)
    yield built
    built.shutdown()


def start(runtime: Runtime, user, payload=FOX, *, reuse_still=True) -> str:
    workflow_id, _ = runtime.start_workflow(user, parse_request(payload), reuse_still=reuse_still)
    return workflow_id


def image_calls(runtime: Runtime, workflow_id: str) -> list[tuple[str, str, str]]:
    """(provider, operation, outcome) of the generate_image step's calls, storage left out."""
    with runtime.db.read() as session:
        rows = session.execute(
            select(ApiCall.provider, ApiCall.operation, ApiCall.outcome, ApiCall.cost_usd).where(
                ApiCall.workflow_id == workflow_id,
                ApiCall.step == StepName.GENERATE_IMAGE.value,
                ApiCall.provider != runtime.providers.storage.name,
            )
        )
        return [(p, o, outcome) for p, o, outcome, _ in rows]


def releases(runtime: Runtime, workflow_id: str) -> list[int]:
    with runtime.db.read() as session:
        rows = session.execute(
            select(CreditTransaction.amount).where(
                CreditTransaction.workflow_id == workflow_id, CreditTransaction.kind == "release"
            )
        )
        return list(rows.scalars())


def still_of(runtime: Runtime, workflow_id: str) -> bytes:
    with runtime.db.read() as session:
        (image,) = [a for a in workflows.assets_of(session, workflow_id) if a.kind == "image"]
    return runtime.providers.storage.get(image.storage_key)


def test_a_reused_still_costs_nothing_and_never_calls_the_image_provider(runtime, make_user):
    user = make_user(credits=100)
    first = start(runtime, user)
    second = start(runtime, user, {**FOX, "videoPrompt": "orbit around the fox"})

    view = load(runtime, second)
    assert view.status is WorkflowStatus.COMPLETED, view.error_message
    assert view.reuse_image_from == first
    assert image_calls(runtime, first) == [("offline", "generate", "ok")]
    assert image_calls(runtime, second) == [("cache", "reuse", "ok")]
    with runtime.db.read() as session:
        (cost,) = session.execute(
            select(ApiCall.cost_usd).where(
                ApiCall.workflow_id == second, ApiCall.operation == "reuse"
            )
        ).scalars()
        reused = still_reused(session, view)
    assert cost == 0
    assert still_of(runtime, second) == still_of(runtime, first)
    assert reused is not None and (reused.source_id, reused.saved) == (first, STILL)
    assert releases(runtime, second) == [STILL]
    assert view.cost_credits == COST - STILL
    assert balance(runtime, user) == 100 - COST - (COST - STILL)
    with runtime.db.read() as session:  # the release gives budget back, as a refund does
        month = budgets.period_of(view.created_at)
        assert budgets.spent(session, budgets.Scope(budgets.ScopeKind.USER, user.id), month) == (
            2 * COST - STILL
        )


@pytest.mark.parametrize("damage", ["deleted", "corrupted"])
def test_a_still_gone_from_storage_is_generated_again_and_charged_normally(
    runtime, make_user, damage
):
    user = make_user(credits=100)
    first = start(runtime, user)
    with runtime.db.read() as session:
        (image,) = [a for a in workflows.assets_of(session, first) if a.kind == "image"]
    storage = runtime.providers.storage
    if damage == "deleted":
        storage.delete(image.storage_key)
    else:  # same size, other bytes: only the checksum can tell
        data = storage.get(image.storage_key)
        storage.put(image.storage_key, bytes(255 - b for b in data), image.content_type)

    second = start(runtime, user, {**FOX, "videoPrompt": "orbit around the fox"})

    view = load(runtime, second)
    assert view.status is WorkflowStatus.COMPLETED, view.error_message
    assert view.reuse_image_from == first  # chosen at start; the file was found wanting later
    assert image_calls(runtime, second) == [("offline", "generate", "ok")]
    with runtime.db.read() as session:
        assert still_reused(session, view) is None
    assert releases(runtime, second) == []
    assert view.cost_credits == COST
    assert balance(runtime, user) == 100 - 2 * COST


def test_a_batch_of_five_camera_variations_pays_for_one_still(settings, make_user, capsys):
    """Threaded: the batch's later runs start while the first still makes its still, and
    wait for it."""
    runtime = engine(settings, ThreadExecutor(2))
    try:
        user = make_user(credits=200)
        form = launch.fields_from_request(FOX)[0]
        variants = launch.variations(form, 5, "camera")
        assert len({v.video_prompt for v in variants}) == 5
        outcome = launch.start_batch(runtime, user, variants, "camera-batch", reuse_still=True)
        ids = outcome.workflow_ids
        wait_for(lambda: all(load(runtime, i).status.is_terminal for i in ids))
    finally:
        runtime.shutdown()

    views = [load(runtime, i) for i in ids]
    assert [v.status for v in views] == [WorkflowStatus.COMPLETED] * 5
    assert [v.reuse_image_from for v in views] == [None, *[ids[0]] * 4]
    generated = [c for i in ids for c in image_calls(runtime, i) if c[1] == "generate"]
    assert generated == [("offline", "generate", "ok")]
    saved = sum(sum(releases(runtime, i)) for i in ids)
    assert saved == 4 * STILL
    assert balance(runtime, user) == 200 - 5 * COST + saved
    # Monitoring reads the same from what the engine wrote.
    with runtime.db.read() as session:
        flt = MonitoringFilter.last(timedelta(hours=1), now=utcnow(), user_id=user.id)
        costs = monitoring.delivered_cost(session, flt).total
        reuse = monitoring.reuse_stats(session, flt)
    assert (costs.delivered, costs.credits_spent, costs.credits_saved) == (
        5,
        5 * COST - saved,
        saved,
    )
    assert (reuse.hits, reuse.credits_saved) == (4, saved)
    with capsys.disabled():
        print(f"\n[still reuse] a batch of 5 camera variations saved {saved} of {5 * COST} credits")


def test_a_different_model_size_quality_style_or_prompt_does_not_reuse(runtime, make_user):
    user = make_user(credits=100)
    first = start(runtime, user)
    assert runtime.reuse_offer(user, REQUEST) == ReuseOffer(first, STILL)
    changes = {
        "prompt": {"imagePrompt": "a grey wolf in fresh snow"},
        "size": {"imageConfig": {"size": "1792x1024"}},
        "quality": {"imageConfig": {"size": "1024x1024", "quality": "hd"}},
        "style": {"imageConfig": {"size": "1024x1024", "style": "natural"}},
        "model": {"imageModel": "gpt-image-1-mini"},
    }
    offers = {
        name: runtime.reuse_offer(user, parse_request({**FOX, **c})) for name, c in changes.items()
    }
    assert offers == dict.fromkeys(changes)
    other = load(runtime, start(runtime, user, {**FOX, **changes["model"]}))
    assert other.status is WorkflowStatus.COMPLETED
    assert other.reuse_image_from is None
    assert image_calls(runtime, other.id) == [("offline", "generate", "ok")]
    assert balance(runtime, user) == 100 - 2 * COST


def test_reuse_turned_off_generates_a_fresh_still(runtime, make_user):
    user = make_user(credits=100)
    start(runtime, user)
    fresh = start(runtime, user, reuse_still=False)

    assert load(runtime, fresh).reuse_image_from is None
    assert image_calls(runtime, fresh) == [("offline", "generate", "ok")]
    assert balance(runtime, user) == 100 - 2 * COST


def test_another_users_still_is_never_reused(runtime, make_user):
    """Projects belong to one user, so "the same project" never spans two users either."""
    alice, bob = make_user(credits=100), make_user(credits=100)
    start(runtime, alice)
    bobs = start(runtime, bob)

    assert load(runtime, bobs).reuse_image_from is None
    assert image_calls(runtime, bobs) == [("offline", "generate", "ok")]
    assert balance(runtime, bob) == 100 - COST


def test_a_failed_runs_still_is_not_offered_it_was_refunded(runtime, make_user):
    user = make_user(credits=100)
    refused = start(runtime, user, {**FOX, "videoPrompt": "a terrorist attack on the fox"})
    assert load(runtime, refused).status is WorkflowStatus.FAILED

    assert runtime.reuse_offer(user, REQUEST) is None
    later = start(runtime, user)
    assert load(runtime, later).reuse_image_from is None
    assert balance(runtime, user) == 100 - COST


def test_a_reusing_run_that_fails_later_gets_back_exactly_what_it_still_held(runtime, make_user):
    user = make_user(credits=100)
    first = start(runtime, user)
    failing = replace(runtime.providers, video=_FailingVideo(runtime.providers.video))
    runtime.orchestrator.providers = failing
    second = start(runtime, user, {**FOX, "videoPrompt": "orbit around the fox"})

    view = load(runtime, second)
    assert view.status is WorkflowStatus.FAILED
    assert view.reuse_image_from == first
    assert releases(runtime, second) == [STILL]
    with runtime.db.read() as session:
        receipt = receipt_for(session, view)
    assert receipt is not None and receipt.refunded == COST - STILL
    assert receipt.still_reused is not None and receipt.still_reused.saved == STILL
    assert balance(runtime, user) == 100 - COST


class _FailingVideo:
    """The offline video provider, refusing every submit for good."""

    def __init__(self, inner) -> None:
        self._inner = inner
        self.name = inner.name

    def submit(self, spec):
        raise PermanentProviderError("the video model refused the job", provider=self.name)

    def __getattr__(self, name):
        return getattr(self._inner, name)
