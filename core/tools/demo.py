"""Realistic demo history written in bulk (`python -m core seed-demo --workflows N`): users,
projects, runs with step timings and long tails, retried provider calls, and a ledger that keeps
every balance equal to the sum of its rows. Postgres is fed with COPY, SQLite with executemany.

The history is terminal only (completed, failed, cancelled): a seeded run left `running` would be
picked up by the recovery pass and really executed.
"""

from __future__ import annotations

import bisect
import csv
import heapq
import io
import itertools
import json
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Boolean, Table, select, update
from sqlalchemy.orm import Session

from core import credits
from core.credits import TransactionKind
from core.db import Database
from core.errors import FailureCategory, RequestValidationError
from core.models import ApiCall, CreditTransaction, Project, User, Workflow, WorkflowStep
from core.pipeline import STEP_CALLS, Capability
from core.providers import catalog
from core.providers.base import ImageSpec
from core.schemas import WorkflowRequest
from core.states import STEP_ORDER, StepName, StepStatus, WorkflowStatus
from core.views import rollup

DEMO_ACTOR_TEMPLATE = "credits-admin@demo-{seed}.reelforge.local"  # who "granted" top-ups
STARTING_GRANT = 500
TOP_UPS = (500, 1000, 1000, 2000)
CHUNK_WORKFLOWS = 5_000  # rows are generated and written this many runs at a time
RETRY_ATTEMPTS = 4  # a call that keeps failing transiently gives up after this many attempts
STEP_BUDGET_S = {StepName.GENERATE_VIDEO: 600.0}  # deadline_at; other steps get 120 s
DEFAULT_STEP_BUDGET_S = 120.0

Progress = Callable[[str, int, int], None]  # (phase, done, total)

FIRST_NAMES = (
    "ada", "alan", "grace", "linus", "margaret", "ken", "barbara", "edsger", "frances", "donald",
    "radia", "john", "katherine", "tim", "hedy", "dennis", "anita", "guido", "shafi", "leslie",
    "sophie", "niklaus", "jean", "bjarne", "lynn", "vint", "karen", "whitfield", "mary", "yukihiro",
    "annie", "james", "evelyn", "brian", "joan", "rob",
)  # fmt: skip
LAST_NAMES = (
    "lovelace", "turing", "hopper", "torvalds", "hamilton", "thompson", "liskov", "dijkstra",
    "allen", "knuth", "perlman", "mccarthy", "johnson", "berners-lee", "lamarr", "ritchie", "borg",
    "van rossum", "goldwasser", "lamport", "wilson", "wirth", "bartik", "stroustrup", "conway",
    "cerf", "sparck jones", "diffie", "keller", "matsumoto", "easley", "gosling", "boyd",
    "kernighan", "clarke", "pike",
)  # fmt: skip
PROJECT_NAMES = (
    "Spring campaign", "Product teasers", "Social shorts", "Brand moodboard", "Launch trailer",
    "Onboarding clips", "Event recap", "Storyboard tests",
)  # fmt: skip
IMAGE_PROMPTS = (
    "a red fox in fresh snow at dawn",
    "a lighthouse on a cliff during a storm, waves crashing",
    "a cosy coffee shop interior with warm light and rain on the window",
    "a futuristic city skyline at dusk with flying trams",
    "a vintage car parked on a desert road under a starry sky",
    "a bowl of ramen with steam rising, top-down studio shot",
    "an astronaut sitting on a swing on the moon",
    "a field of sunflowers with a small farmhouse, golden hour",
    "a paper boat on a puddle reflecting neon signs",
    "a mountain lake with a wooden canoe, morning mist",
    "a hummingbird hovering next to a red flower, macro",
    "a minimalist product shot of a white sneaker on pastel background",
    "a medieval market square bustling with merchants",
    "an underwater coral reef with a sea turtle",
    "a tiny robot watering a bonsai tree",
    "a snowy cabin in a pine forest with smoke from the chimney",
)
VIDEO_PROMPTS = (
    "slow dolly in, snow falling",
    "camera pans left to right, gentle wind",
    "slow zoom out revealing the whole scene",
    "handheld tracking shot, shallow depth of field",
    "timelapse of clouds moving across the sky",
    "orbit around the subject, cinematic lighting",
    "the subject turns toward the camera and smiles",
    "steam and light particles drift upward",
    "rain starts falling, reflections ripple",
    "crane shot rising above the scene",
)
MODERATION_FLAGS = (
    ("imagePrompt", "violence"),
    ("videoPrompt", "violence/graphic"),
    ("imagePrompt", "sexual"),
    ("videoPrompt", "harassment"),
    ("imagePrompt", "self-harm"),
)


@dataclass(frozen=True)
class _Failure:
    """One way a run fails: where, why, and how that step's provider calls ended."""

    weight: int
    step: StepName
    category: FailureCategory
    message: str
    mode: str  # refused | permanent | transient | timeout | job_failed
    call: tuple[str, str] | None = None  # (provider, operation) the failure hits
    status_code: int | None = None
    error_code: str | None = None


FAILURES: tuple[_Failure, ...] = (
    _Failure(
        28,
        StepName.VALIDATE,
        FailureCategory.MODERATION,
        "Moderation refused the request",
        "refused",
    ),
    _Failure(
        10,
        StepName.GENERATE_IMAGE,
        FailureCategory.CONTENT_POLICY,
        "The image model refused the prompt: your request was rejected by the safety system",
        "permanent",
        ("openai", "generate"),
        400,
        "content_policy_violation",
    ),
    _Failure(
        9,
        StepName.GENERATE_IMAGE,
        FailureCategory.PROVIDER_UNAVAILABLE,
        "OpenAI did not answer after 4 attempts: 503 Service Unavailable",
        "transient",
        ("openai", "generate"),
        503,
        "server_error",
    ),
    _Failure(
        3,
        StepName.GENERATE_IMAGE,
        FailureCategory.PROVIDER_AUTH,
        "OpenAI refused the API key (401 invalid_api_key)",
        "permanent",
        ("openai", "generate"),
        401,
        "invalid_api_key",
    ),
    _Failure(
        3,
        StepName.UPLOAD_IMAGE,
        FailureCategory.STORAGE,
        "Storage did not answer after 4 attempts: 503 SlowDown",
        "transient",
        ("s3", "put"),
        503,
        "SlowDown",
    ),
    _Failure(
        13,
        StepName.GENERATE_VIDEO,
        FailureCategory.PROVIDER_UNAVAILABLE,
        "fal.ai did not answer after 4 attempts: 429 Too Many Requests",
        "transient",
        ("fal", "submit"),
        429,
        "rate_limited",
    ),
    _Failure(
        10,
        StepName.GENERATE_VIDEO,
        FailureCategory.TIMEOUT,
        "generate_video ran past its 600 s budget; the provider confirmed the cancellation",
        "timeout",
    ),
    _Failure(
        9,
        StepName.GENERATE_VIDEO,
        FailureCategory.PROVIDER_REJECTED,
        "The video provider failed the job: the input image could not be processed",
        "job_failed",
    ),
    _Failure(
        4,
        StepName.GENERATE_VIDEO,
        FailureCategory.CONTENT_POLICY,
        "The video provider refused the prompt: content policy violation",
        "permanent",
        ("fal", "submit"),
        422,
        "content_policy_violation",
    ),
    _Failure(
        3,
        StepName.GENERATE_VIDEO,
        FailureCategory.STALE,
        "The runner stopped (no heartbeat for 180 s); the run was failed and refunded",
        "job_failed",
    ),
    _Failure(
        4,
        StepName.UPLOAD_VIDEO,
        FailureCategory.VERIFICATION,
        "The video provider returned an unreadable file: no video stream found",
        "refused",
    ),
    _Failure(
        1,
        StepName.UPLOAD_VIDEO,
        FailureCategory.INTERNAL,
        "Unexpected error in upload_video: KeyError('video_url')",
        "refused",
    ),
    _Failure(
        3,
        StepName.FINALIZE,
        FailureCategory.VERIFICATION,
        "The video lasts 5.21 s, not the 8 s asked for",
        "refused",
    ),
)
# Where a cancel lands (None: while still queued, before any step started).
CANCEL_AT: tuple[tuple[StepName | None, int], ...] = (
    (None, 10),
    (StepName.VALIDATE, 3),
    (StepName.GENERATE_IMAGE, 25),
    (StepName.UPLOAD_IMAGE, 4),
    (StepName.GENERATE_VIDEO, 50),
    (StepName.UPLOAD_VIDEO, 8),
)
# Transient failure rate of a single attempt, by provider: the "few % of calls retried".
TRANSIENT_RATE = {"openai": 0.03, "fal": 0.035, "s3": 0.006}
TRANSIENT_ERRORS = {
    "openai": ((429, "rate_limit_exceeded"), (503, "server_error"), (None, "timeout")),
    "fal": ((429, "rate_limited"), (502, "bad_gateway"), (503, "service_unavailable")),
    "s3": ((503, "SlowDown"), (500, "InternalError")),
}

WORKFLOW_COLUMNS = (
    "id", "user_id", "project_id", "client_key", "status", "image_prompt", "video_prompt",
    "request", "video_model", "cost_credits", "cancel_requested", "recoveries", "error_message",
    "error_category", "provider_cancel_confirmed", "created_at", "started_at", "finished_at",
)  # fmt: skip
STEP_COLUMNS = (
    "workflow_id", "name", "position", "status", "progress", "message", "attempts",
    "provider_request_id", "output", "error_message", "error_category", "started_at",
    "finished_at", "deadline_at",
)  # fmt: skip
CALL_COLUMNS = (
    "workflow_id", "step", "provider", "operation", "attempt", "started_at", "duration_ms",
    "outcome", "status_code", "error_code", "error_message", "cost_usd",
)  # fmt: skip
LEDGER_COLUMNS = (
    "user_id", "kind", "amount", "balance_after", "workflow_id", "actor", "reason",
    "idempotency_key", "created_at",
)  # fmt: skip
JSON_COLUMNS = frozenset({"request", "output"})


@dataclass(frozen=True)
class SeedResult:
    users: int
    projects: int
    workflows: int
    steps: int
    api_calls: int
    ledger_rows: int
    statuses: dict[str, int]
    seconds: float


@dataclass(frozen=True)
class _RunConfig:
    """One combination of request options, with its credits and list prices precomputed."""

    request: dict[str, Any]  # the stored request minus prompts and project
    cost_credits: int
    image_usd: Decimal
    video_usd: Decimal
    image_factor: float  # how much slower than a standard image
    video_factor: float  # how much slower than an 8 s 720p VEO 3.1 clip


@dataclass
class _DemoUser:
    id: int
    email: str
    created_at: datetime
    projects: list[int]
    balance: int = 0


@dataclass
class _Chunk:
    workflows: list[tuple] = field(default_factory=list)
    steps: list[tuple] = field(default_factory=list)
    calls: list[tuple] = field(default_factory=list)
    ledger: list[tuple] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Entry point


def seed_demo(
    db: Database,
    *,
    workflows: int,
    days: int = 365,
    seed: int = 0,
    now: datetime | None = None,
    progress: Progress | None = None,
) -> SeedResult:
    """Write `workflows` runs spread over the last `days` days, in one transaction."""
    if workflows < 1:
        raise RequestValidationError({"workflows": "must be at least 1"})
    if days < 1:
        raise RequestValidationError({"days": "must be at least 1"})
    started = time.perf_counter()
    now = (now or datetime.now(UTC)).astimezone(UTC)
    rng = random.Random(seed)
    report = progress or (lambda *_: None)
    counts = Counter[str]()
    statuses = Counter[str]()
    with db.begin() as session:
        users = _create_users(session, rng, seed, now, days)
        writer = _writer(session)
        generator = _Generator(rng, users, credits.load_costs(session), seed)
        for user in users:
            counts["ledger"] += writer.write_ledger(generator.starting_grant(user))
        times = _arrival_times(rng, workflows, now, days)
        report("workflows", 0, workflows)
        # Generating the next chunk (Python) overlaps with writing the last one (the server):
        # one writer thread, handed one chunk at a time, and the session is only ever used by
        # one thread at once.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="seed-writer") as pool:
            pending: Future[Counter[str]] | None = None
            for begin in range(0, workflows, CHUNK_WORKFLOWS):
                chunk = generator.chunk(times[begin : begin + CHUNK_WORKFLOWS])
                statuses.update(row[4] for row in chunk.workflows)
                if pending is not None:
                    counts.update(pending.result())
                    report("workflows", begin, workflows)
                pending = pool.submit(writer.write_chunk, chunk)
            if pending is not None:
                counts.update(pending.result())
        counts["ledger"] += writer.write_ledger(generator.remaining_refunds())
        report("workflows", workflows, workflows)
        for user in users:
            session.execute(update(User).where(User.id == user.id).values(balance=user.balance))
        rollup.forget_all(session)  # the history lands on days the rollups may hold
        report("committing", workflows, workflows)
    return SeedResult(
        users=len(users),
        projects=sum(len(u.projects) for u in users),
        workflows=counts["workflows"],
        steps=counts["steps"],
        api_calls=counts["calls"],
        ledger_rows=counts["ledger"],
        statuses=dict(statuses),
        seconds=time.perf_counter() - started,
    )


def _create_users(
    session: Session, rng: random.Random, seed: int, now: datetime, days: int
) -> list[_DemoUser]:
    domain = f"demo-{seed}.reelforge.local"
    taken = session.execute(select(User.id).where(User.email.endswith(f"@{domain}"))).first()
    if taken:
        raise RequestValidationError(
            {"seed": f"demo users @{domain} already exist; pick another --seed"}
        )
    history_start = now - timedelta(days=days)
    users = []
    for i, (first, last) in enumerate(zip(FIRST_NAMES, LAST_NAMES, strict=True)):
        created_at = history_start - timedelta(days=rng.uniform(1, 30))
        user = User(
            email=f"{first}.{last.replace(' ', '-')}@{domain}",
            display_name=f"{first.title()} {last.title()}",
            role="user",
            balance=0,
            created_at=created_at,
        )
        session.add(user)
        session.flush()
        names = rng.sample(PROJECT_NAMES, 1 + i % 3)
        projects = [Project(user_id=user.id, name=name, created_at=created_at) for name in names]
        session.add_all(projects)
        session.flush()
        users.append(_DemoUser(user.id, user.email, created_at, [p.id for p in projects]))
    return users


def _arrival_times(rng: random.Random, n: int, now: datetime, days: int) -> list[datetime]:
    """Sorted start times: a growing business, busy weekdays and working hours (UTC)."""
    end = now - timedelta(minutes=30)  # every run has finished by now
    start = end - timedelta(days=days)
    hours = days * 24
    weights = []
    for h in range(hours):
        moment = start + timedelta(hours=h)
        growth = 0.5 + h / hours
        weekday = 0.35 if moment.weekday() >= 5 else 1.0
        daytime = 0.15 + math.exp(-(((moment.hour - 14) / 4.5) ** 2))
        weights.append(growth * weekday * daytime)
    cumulative = list(_accumulate(weights))
    total = cumulative[-1]
    offsets = sorted(
        bisect.bisect_left(cumulative, rng.random() * total) + rng.random() for _ in range(n)
    )
    return [start + timedelta(hours=min(o, hours - 1e-6)) for o in offsets]


def _accumulate(values: Sequence[float]) -> Iterator[float]:
    running = 0.0
    for value in values:
        running += value
        yield running


# ---------------------------------------------------------------------------------------------
# Generating rows


class _Generator:
    def __init__(
        self, rng: random.Random, users: list[_DemoUser], costs: credits.CreditCosts, seed: int
    ) -> None:
        self.rng = rng
        self.users = users
        # A few heavy users and a long tail of occasional ones.
        self.user_weights = list(_accumulate([1 / (i + 1) ** 0.8 for i in range(len(users))]))
        self.configs = _run_configs(costs)
        self.config_weights = list(_accumulate([w for w, _ in self.configs]))
        self.failure_weights = list(_accumulate([f.weight for f in FAILURES]))
        self.cancel_weights = list(_accumulate([w for _, w in CANCEL_AT]))
        self.actor = DEMO_ACTOR_TEMPLATE.format(seed=seed)
        self.pending_refunds: list[tuple[datetime, int, tuple]] = []  # heap by time
        self.refund_seq = 0

    def _pick(self, cumulative: list[float]) -> int:
        return bisect.bisect_left(cumulative, self.rng.random() * cumulative[-1])

    def _lognormal(self, median: float, sigma: float) -> float:
        value = self.rng.lognormvariate(math.log(median), sigma)
        if self.rng.random() < 0.02:  # the long tail: a slow provider, a cold start
            value *= self.rng.uniform(2.0, 5.0)
        return value

    def starting_grant(self, user: _DemoUser) -> list[tuple]:
        user.balance = STARTING_GRANT
        return [
            (
                user.id,
                TransactionKind.GRANT.value,
                STARTING_GRANT,
                user.balance,
                None,
                credits.SYSTEM_ACTOR,
                "starting credits",
                None,
                user.created_at,
            )
        ]

    def remaining_refunds(self) -> list[tuple]:
        rows = []
        while self.pending_refunds:
            _, _, make = heapq.heappop(self.pending_refunds)
            rows.append(self._refund_row(*make))
        return rows

    def _refund_row(self, user: _DemoUser, amount: int, workflow_id: str, reason: str, at):
        user.balance += amount
        return (
            user.id,
            TransactionKind.REFUND.value,
            amount,
            user.balance,
            workflow_id,
            credits.SYSTEM_ACTOR,
            reason,
            f"refund:{workflow_id}",
            at,
        )

    def chunk(self, times: Sequence[datetime]) -> _Chunk:
        chunk = _Chunk()
        for created_at in times:
            # Refunds due before this start go first, so the ledger reads in time order.
            while self.pending_refunds and self.pending_refunds[0][0] <= created_at:
                _, _, make = heapq.heappop(self.pending_refunds)
                chunk.ledger.append(self._refund_row(*make))
            self._workflow(chunk, created_at)
        return chunk

    def _workflow(self, chunk: _Chunk, created_at: datetime) -> None:
        rng = self.rng
        user = self.users[self._pick(self.user_weights)]
        config = self.configs[self._pick(self.config_weights)][1]
        project_id = rng.choice(user.projects) if rng.random() < 0.85 else None
        workflow_id = f"{rng.getrandbits(128):032x}"
        image_prompt, video_prompt = rng.choice(IMAGE_PROMPTS), rng.choice(VIDEO_PROMPTS)
        request = {
            **config.request,
            "imagePrompt": image_prompt,
            "videoPrompt": video_prompt,
            "projectId": project_id,
        }
        roll = rng.random()
        failure = cancel_at = None
        if roll < 0.10:
            failure = FAILURES[self._pick(self.failure_weights)]
        elif roll < 0.15:
            cancel_at = CANCEL_AT[self._pick(self.cancel_weights)][0]
            if cancel_at is None:
                cancel_at = "queued"
        run = _RunBuilder(self, workflow_id, config, created_at)
        status, message, category = run.play(failure, cancel_at)

        if user.balance < config.cost_credits:
            top_up = rng.choice(TOP_UPS)
            user.balance += top_up
            chunk.ledger.append(
                (
                    user.id,
                    TransactionKind.GRANT.value,
                    top_up,
                    user.balance,
                    None,
                    self.actor,
                    "top-up",
                    None,
                    created_at - timedelta(seconds=rng.uniform(1, 600)),
                )
            )
        user.balance -= config.cost_credits
        chunk.ledger.append(
            (
                user.id,
                TransactionKind.RESERVE.value,
                -config.cost_credits,
                user.balance,
                workflow_id,
                user.email,
                "credits reserved at start",
                f"reserve:{workflow_id}",
                created_at,
            )
        )
        if status != WorkflowStatus.COMPLETED.value:
            reason = message if status == WorkflowStatus.FAILED.value else "cancelled by the user"
            refund_at = run.finished_at + timedelta(milliseconds=3)
            self.refund_seq += 1
            heapq.heappush(
                self.pending_refunds,
                (
                    refund_at,
                    self.refund_seq,
                    (user, config.cost_credits, workflow_id, reason, refund_at),
                ),
            )
        chunk.workflows.append(
            (
                workflow_id,
                user.id,
                project_id,
                f"demo-{workflow_id[:12]}",
                status,
                image_prompt,
                video_prompt,
                json.dumps(request),
                request.get("videoModel"),
                config.cost_credits,
                status == WorkflowStatus.CANCELLED.value,
                run.recoveries,
                message,
                category,
                # A run past its budget had its video job cancelled, and the provider confirmed.
                True if failure is not None and failure.mode == "timeout" else None,
                created_at,
                run.started_at,
                run.finished_at,
            )
        )
        chunk.steps.extend(run.steps)
        chunk.calls.extend(run.calls)


class _RunBuilder:
    """Plays one run forward in time: steps one after another, each with its provider calls."""

    def __init__(
        self, gen: _Generator, workflow_id: str, config: _RunConfig, created_at: datetime
    ) -> None:
        self.gen = gen
        self.rng = gen.rng
        self.workflow_id = workflow_id
        self.config = config
        self.created_at = created_at
        self.steps: list[tuple] = []
        self.calls: list[tuple] = []
        self.started_at: datetime | None = None
        self.finished_at = created_at
        self.recoveries = 0

    def play(
        self, failure: _Failure | None, cancel_at: StepName | str | None
    ) -> tuple[str, str | None, str | None]:
        """Returns the run's (status, error_message, error_category)."""
        rng = self.rng
        if cancel_at == "queued":
            at = self.created_at + timedelta(seconds=rng.uniform(0.5, 20))
            for position, name in enumerate(STEP_ORDER):
                self._step_row(
                    name, position, StepStatus.CANCELLED, None, at, "cancelled before it started"
                )
            self.finished_at = at
            return WorkflowStatus.CANCELLED.value, None, None
        clock = self.created_at + timedelta(seconds=self._queue_wait())
        self.started_at = clock
        resumed = failure is None and cancel_at is None and rng.random() < 0.01
        outcome: tuple[str, str | None, str | None] = (WorkflowStatus.COMPLETED.value, None, None)
        ended = False
        for position, name in enumerate(STEP_ORDER):
            if ended:
                self._step_row(name, position, StepStatus.SKIPPED, None, clock, "skipped")
                continue
            clock += timedelta(milliseconds=rng.uniform(5, 60))
            start = clock
            if failure is not None and failure.step is name:
                clock = self._calls(name, start, failure=failure)
                message = failure.message
                if failure.category is FailureCategory.MODERATION:
                    field_name, flag = rng.choice(MODERATION_FLAGS)
                    message = f"{message}: {field_name} flagged for {flag}"
                category = failure.category.value
                self._step_row(name, position, StepStatus.FAILED, start, clock, message, category)
                outcome = (WorkflowStatus.FAILED.value, message, category)
                ended = True
            elif cancel_at is name:
                clock = self._calls(name, start, cancelled=True)
                self._step_row(name, position, StepStatus.CANCELLED, start, clock, "cancelled")
                outcome = (WorkflowStatus.CANCELLED.value, "cancelled by the user", None)
                ended = True
            else:
                clock = self._calls(name, start)
                attempts = 1
                if resumed and name is StepName.GENERATE_VIDEO:
                    # A runner died mid-step; recovery resumed the run and reattached to the job.
                    clock += timedelta(seconds=rng.uniform(60, 180))
                    self.recoveries, attempts = 1, 2
                self._step_row(
                    name, position, StepStatus.COMPLETED, start, clock, "done", attempts=attempts
                )
        self.finished_at = clock + timedelta(milliseconds=rng.uniform(2, 20))
        return outcome

    def _queue_wait(self) -> float:
        wait = self.rng.lognormvariate(math.log(0.4), 0.8)
        if self.rng.random() < 0.03:  # a burst: every worker was busy
            wait += self.rng.uniform(10, 240)
        return wait

    def _step_row(
        self,
        name: StepName,
        position: int,
        status: StepStatus,
        started: datetime | None,
        finished: datetime,
        message: str,
        category: str | None = None,
        *,
        attempts: int = 1,
    ) -> None:
        failed = status is StepStatus.FAILED
        budget = STEP_BUDGET_S.get(name, DEFAULT_STEP_BUDGET_S)
        submitted = name is StepName.GENERATE_VIDEO and started is not None
        self.steps.append(
            (
                self.workflow_id,
                name.value,
                position,
                status.value,
                100 if status is StepStatus.COMPLETED else (0 if started is None else 40),
                message,
                attempts if started is not None else 0,
                f"demo-{self.workflow_id[:20]}" if submitted else None,
                _STEP_OUTPUT[name] if status is StepStatus.COMPLETED else "{}",
                message if failed else None,
                category,
                started,
                finished,
                None if started is None else started + timedelta(seconds=budget),
            )
        )

    # -- provider calls -------------------------------------------------------------------

    def _calls(
        self,
        name: StepName,
        clock: datetime,
        *,
        failure: _Failure | None = None,
        cancelled: bool = False,
    ) -> datetime:
        """Record the step's calls from `clock` on and return when the step ended."""
        rng, config = self.rng, self.config
        plan = _call_plan(name, config, rng)
        if cancelled:
            plan = plan[: rng.randint(1, max(1, len(plan) - 1))]
            if name is StepName.GENERATE_VIDEO:
                plan.append(_cancel_call())
        if failure is not None and failure.mode in ("timeout", "job_failed"):
            plan = [p for p in plan if p[1] != "result"]
            if failure.mode == "timeout":
                budget_s = STEP_BUDGET_S[StepName.GENERATE_VIDEO]
                polls = [p for p in plan if p[1] == "status"]
                plan = [plan[0], *(polls * 4), _cancel_call()]
                plan = [(*p[:4], budget_s / len(plan)) if p[1] == "status" else p for p in plan]
        for provider, operation, median_ms, cost, wait_after_s in plan:
            hit = failure is not None and failure.call == (provider, operation)
            if hit and failure.mode == "permanent":
                clock = self._call(
                    name, provider, operation, 1, clock, median_ms, "permanent", failure
                )
                return clock
            if hit and failure.mode == "transient":
                for attempt in range(1, RETRY_ATTEMPTS + 1):
                    clock = self._call(
                        name, provider, operation, attempt, clock, median_ms, "transient", failure
                    )
                    clock += timedelta(seconds=min(2**attempt, 20) * rng.uniform(0.5, 1.0))
                return clock
            attempt = 1
            # A few % of attempts hit a transient error and are retried after a backoff.
            while attempt < RETRY_ATTEMPTS and rng.random() < TRANSIENT_RATE[provider]:
                clock = self._call(
                    name, provider, operation, attempt, clock, median_ms, "transient"
                )
                clock += timedelta(seconds=min(2**attempt, 20) * rng.uniform(0.5, 1.0))
                attempt += 1
            clock = self._call(
                name, provider, operation, attempt, clock, median_ms, "ok", cost=cost
            )
            clock += timedelta(seconds=wait_after_s + rng.uniform(0.002, 0.03))
        if failure is not None and failure.mode == "refused":
            clock += timedelta(milliseconds=rng.uniform(5, 200))
        return clock

    def _call(
        self,
        step: StepName,
        provider: str,
        operation: str,
        attempt: int,
        clock: datetime,
        median_ms: float,
        outcome: str,
        failure: _Failure | None = None,
        *,
        cost: Decimal = Decimal(0),
    ) -> datetime:
        status_code = error_code = error_message = None
        duration_ms = max(1, round(self.gen._lognormal(median_ms, 0.35)))
        if outcome == "transient":
            if failure is not None:
                status_code, error_code = failure.status_code, failure.error_code
            else:
                status_code, error_code = self.rng.choice(TRANSIENT_ERRORS[provider])
            if error_code == "timeout":
                duration_ms = max(duration_ms, 30_000)
            error_message = f"{provider} {operation}: {status_code or ''} {error_code}".strip()
        elif outcome == "permanent" and failure is not None:
            status_code, error_code, error_message = (
                failure.status_code,
                failure.error_code,
                failure.message,
            )
        self.calls.append(
            (
                self.workflow_id,
                step.value,
                provider,
                operation,
                attempt,
                clock,
                duration_ms,
                outcome,
                status_code,
                error_code,
                error_message,
                cost if outcome == "ok" else Decimal(0),
            )
        )
        return clock + timedelta(milliseconds=duration_ms)


_STEP_OUTPUT = {
    name: json.dumps({"moderation": {"provider": "openai", "flagged": False}})
    if name is StepName.VALIDATE
    else json.dumps({"demo": True})
    for name in STEP_ORDER
}


# Who answers each capability in the demo history, and each call's median duration.
DEMO_PROVIDERS: dict[Capability, str] = {
    "moderator": "openai",
    "image": "openai",
    "video": "fal",
    "storage": "s3",
}
CALL_MEDIAN_MS = {
    "moderate": 350.0,
    "generate": 14_000.0,  # a standard image; slower options scale it
    "put": 300.0,
    "get": 120.0,
    "copy": 150.0,  # inside S3: the still never leaves it
    "submit": 450.0,
    "status": 180.0,
    "result": 300.0,
    "download": 2_200.0,
    "head": 60.0,
    "delete": 70.0,
    "cancel": 350.0,
}
VIDEO_PUT_MS = 900.0  # a clip is far larger than a still


def _call_plan(
    name: StepName, config: _RunConfig, rng: random.Random
) -> list[tuple[str, str, float, Decimal, float]]:
    """The calls a step makes on success, from the pipeline's own list: (provider, operation,
    median ms, cost, wait after)."""
    plan: list[tuple[str, str, float, Decimal, float]] = []
    for capability, operation in STEP_CALLS[name]:
        provider, median_ms = DEMO_PROVIDERS[capability], CALL_MEDIAN_MS[operation]
        cost = Decimal(0)
        if operation == "generate":
            median_ms, cost = median_ms * config.image_factor, config.image_usd
        elif operation == "result":
            cost = config.video_usd
        elif name is StepName.UPLOAD_VIDEO and operation == "put":
            median_ms = VIDEO_PUT_MS
        if operation == "status":
            plan += _polls(provider, median_ms, config, rng)
        else:
            plan.append((provider, operation, median_ms, cost, 0.0))
    return plan


def _polls(
    provider: str, median_ms: float, config: _RunConfig, rng: random.Random
) -> list[tuple[str, str, float, Decimal, float]]:
    """The demo records one status poll per ~minute of rendering (the live pipeline polls more
    often); the render time itself passes between the polls."""
    render_s = rng.lognormvariate(math.log(70.0 * config.video_factor), 0.3)
    if rng.random() < 0.03:
        render_s *= rng.uniform(2.0, 4.0)
    polls = max(1, round(render_s / 75))
    return [(provider, "status", median_ms, Decimal(0), render_s / polls)] * polls


def _cancel_call() -> tuple[str, str, float, Decimal, float]:
    return (DEMO_PROVIDERS["video"], "cancel", CALL_MEDIAN_MS["cancel"], Decimal(0), 0.0)


# Request options with how often users pick them (and how much slower they render).
QUALITIES = (("standard", 0.8, 1.0), ("hd", 0.2, 1.4))
SIZES = (("1792x1024", 0.6), ("1024x1792", 0.25), ("1024x1024", 0.15))
DURATIONS = (("8s", 0.6, 1.0), ("6s", 0.2, 0.85), ("4s", 0.2, 0.7))
RESOLUTIONS = (("720p", 0.7, 1.0), ("1080p", 0.3, 1.25))
AUDIO = ((True, 0.7), (False, 0.3))
IMAGE_MODEL_WEIGHTS = ((None, 0.7), ("gpt-image-1.5", 0.15), ("gpt-image-1-mini", 0.15))
VIDEO_MODEL_WEIGHTS = (
    (None, 0.6, 1.0),
    ("fal-ai/veo3.1/fast/image-to-video", 0.25, 0.55),
    ("fal-ai/veo3.1/lite/image-to-video", 0.15, 0.45),
)


def _run_configs(costs: credits.CreditCosts) -> list[tuple[float, _RunConfig]]:
    """Every combination of request options, weighted, with its credits and list prices."""
    configs = []
    options = (
        *(QUALITIES, SIZES, DURATIONS, RESOLUTIONS, AUDIO),
        *(IMAGE_MODEL_WEIGHTS, VIDEO_MODEL_WEIGHTS),
    )
    for combo in itertools.product(*options):
        (quality, wq, fq), (size, ws), (duration, wd, fd), (resolution, wr, fr) = combo[:4]
        (audio, wa), (image_model, wi), (video_model, wv, fv) = combo[4:]
        request = WorkflowRequest.model_validate(
            {
                "imagePrompt": "x",
                "videoPrompt": "x",
                "imageConfig": {"quality": quality, "size": size},
                "videoConfig": {
                    "duration": duration,
                    "resolution": resolution,
                    "generateAudio": audio,
                },
                "imageModel": image_model,
                "videoModel": video_model,
            }
        )
        image = request.image_config
        spec = ImageSpec(
            prompt="x",
            width=image.width,
            height=image.height,
            quality=quality,
            style=image.style,
            model=image_model or catalog.DEFAULT_IMAGE_MODEL,
        )
        mapped = catalog.image_request(spec)
        image_usd = catalog.estimate_image_usd(spec.model, quality, mapped.width, mapped.height)
        video_usd = catalog.estimate_video_usd(
            video_model, request.video_config.duration_s, resolution, audio
        )
        stored = request.to_json()
        for key in ("imagePrompt", "videoPrompt", "projectId"):
            stored.pop(key)
        config = _RunConfig(
            request=stored,
            cost_credits=credits.cost_of(request, costs),
            image_usd=Decimal(str(image_usd)),
            video_usd=Decimal(str(video_usd)),
            image_factor=fq,
            video_factor=fd * fr * fv,
        )
        configs.append((wq * ws * wd * wr * wa * wi * wv, config))
    return configs


# ---------------------------------------------------------------------------------------------
# Writing rows


class _Writer:
    def __init__(self, session: Session) -> None:
        self.session = session

    def write(self, table: Table, columns: Sequence[str], rows: list[tuple]) -> int:
        raise NotImplementedError

    def write_ledger(self, rows: list[tuple]) -> int:
        return self.write(CreditTransaction.__table__, LEDGER_COLUMNS, rows)

    def write_chunk(self, chunk: _Chunk) -> Counter[str]:
        return Counter(
            workflows=self.write(Workflow.__table__, WORKFLOW_COLUMNS, chunk.workflows),
            steps=self.write(WorkflowStep.__table__, STEP_COLUMNS, chunk.steps),
            calls=self.write(ApiCall.__table__, CALL_COLUMNS, chunk.calls),
            ledger=self.write_ledger(chunk.ledger),
        )


class _PostgresWriter(_Writer):
    """COPY ... FROM STDIN (CSV) on the session's own connection, so it shares the transaction.

    In CSV an unquoted empty field is NULL, which is what csv.writer makes of None. It makes the
    same of an empty string, so the generator never emits one (NOT NULL columns would refuse it).
    """

    def write(self, table: Table, columns: Sequence[str], rows: list[tuple]) -> int:
        if not rows:
            return 0
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(rows)
        buffer.seek(0)
        raw = self.session.connection().connection.dbapi_connection
        with raw.cursor() as cursor:
            cursor.copy_expert(
                f"COPY {table.name} ({', '.join(columns)}) FROM STDIN WITH (FORMAT csv)", buffer
            )
        return len(rows)


class _SqliteWriter(_Writer):
    """Batched executemany in the caller's transaction, values in SQLAlchemy's storage format."""

    def write(self, table: Table, columns: Sequence[str], rows: list[tuple]) -> int:
        if not rows:
            return 0
        converters = [_sqlite_converter(table.c[name]) for name in columns]
        values = [tuple(c(v) for c, v in zip(converters, row, strict=True)) for row in rows]
        placeholders = ", ".join("?" * len(columns))
        self.session.connection().exec_driver_sql(
            f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({placeholders})", values
        )
        return len(rows)


def _sqlite_converter(column) -> Callable[[Any], Any]:
    if column.name in JSON_COLUMNS:
        return lambda v: v  # already JSON text
    if column.name.endswith("_at"):
        return lambda v: (
            None
            if v is None
            else v.astimezone(UTC).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
        )
    if column.name == "cost_usd":
        return float
    if isinstance(column.type, Boolean):
        return lambda v: None if v is None else int(v)
    return lambda v: v


def _writer(session: Session) -> _Writer:
    if session.get_bind().dialect.name == "postgresql":
        return _PostgresWriter(session)
    return _SqliteWriter(session)
