"""The monitoring page's queries. Every number is aggregated in SQL and returned as small frozen
dataclasses; no raw rows ever reach Python.

Definitions both databases share (tests prove they agree on the same rows):
- A run belongs to the range when it was *created* in [since, until); a step when it *started* in
  it; a provider call when it started in it; a ledger row when it was written in it.
- Durations are whole milliseconds, rounded half away from zero from the exact timestamps.
- Percentiles are linear interpolation between closest ranks, Postgres' `percentile_cont`: for n
  sorted values v[0..n-1], h = p * (n - 1), result = v[floor h] + (h - floor h) *
  (v[ceil h] - v[floor h]). SQLite computes the same with window functions (rank, count).
- `user_id` and `project_id` narrow every panel (calls and ledger rows through their run);
  `provider` narrows the provider panels only (api_calls).

At a year of history (100,000 runs, 600,000 steps, a million calls) every panel reads an index
built for it (migration 0003): runs by creation time covering status and timings; completed
steps by (step, duration); calls by (provider, operation, duration) covering the counted
columns; the few failed calls and failed steps through partial indexes; the cost of a delivered
video through the priced calls' partial index (migration 0013).

Sums over closed days come from day rollups (core.views.rollup, migration 0014): the cost of a
delivered video, credit usage and totals, and the counts, means, maxima and histograms of the
step and provider panels; the raw rows serve the rest of the range, and the two are summed, so
every figure is the raw rows' own. The step and provider rollups also count durations per
bucket (migration 0016): a percentile's ranks are found in the bucket counts and only the
buckets holding them are read, from their covering index (_bucketed_percentiles), which gives
percentile_cont's own figure. They know no users nor projects, so those panels read raw rows
(every value, in index order) when the filter names either, or for hourly ranges.
`bench/monitoring.py` and `bench/hot_queries.py` time them all.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    DateTime,
    Float,
    Integer,
    Select,
    String,
    and_,
    case,
    cast,
    extract,
    func,
    literal,
    literal_column,
    null,
    select,
    text,
    union_all,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session
from sqlalchemy.sql.expression import Subquery

from core.errors import RequestValidationError
from core.models import (
    ApiCall,
    CallDayRollup,
    CreditTransaction,
    LedgerDayRollup,
    Project,
    RunDayRollup,
    StepDayRollup,
    User,
    Workflow,
    WorkflowStep,
)
from core.reuse import CACHE_PROVIDER as REUSE_PROVIDER
from core.reuse import REUSE_OPERATION
from core.states import STEP_ORDER, StepStatus, WorkflowStatus
from core.views import rollup
from core.views.rollup import DEFAULT_MODEL_LABEL as DEFAULT_MODEL_LABEL  # re-exported
from core.views.rollup import HISTOGRAM_EDGES_S as HISTOGRAM_EDGES_S

HOURLY_MAX_RANGE = timedelta(days=2)  # longer ranges are bucketed by day
DAILY_USAGE_MAX_RANGE = timedelta(days=92)  # longer credit-usage ranges by week
SORT_WORK_MEM = "64MB"
IN_FLIGHT = (WorkflowStatus.QUEUED.value, WorkflowStatus.RUNNING.value)
_NOT_OK = text("api_calls.outcome <> 'ok'")  # a literal: SQLite matches partial indexes by text


class Granularity(StrEnum):
    """Bucket size of a time series; buckets start on whole UTC hours, days, or Mondays."""

    HOUR = "hour"
    DAY = "day"
    WEEK = "week"

    @property
    def step(self) -> timedelta:
        return {"hour": timedelta(hours=1), "day": timedelta(days=1)}.get(
            self.value, timedelta(weeks=1)
        )


@dataclass(frozen=True)
class MonitoringFilter:
    since: datetime
    until: datetime
    user_id: int | None = None
    project_id: int | None = None
    provider: str | None = None

    def __post_init__(self) -> None:
        if self.since.tzinfo is None or self.until.tzinfo is None:
            raise RequestValidationError({"range": "since and until must be timezone-aware"})
        if self.since >= self.until:
            raise RequestValidationError({"range": "since must be before until"})

    @classmethod
    def last(cls, period: timedelta, *, now: datetime | None = None, **narrow: Any):
        """The `period` up to now, e.g. MonitoringFilter.last(timedelta(days=7), user_id=3)."""
        until = now or datetime.now(UTC)
        return cls(since=until - period, until=until, **narrow)

    @property
    def granularity(self) -> Granularity:
        """Hourly up to two days, else daily (outcomes over time)."""
        return Granularity.HOUR if self.until - self.since <= HOURLY_MAX_RANGE else Granularity.DAY

    @property
    def usage_granularity(self) -> Granularity:
        """As `granularity`, but weekly past DAILY_USAGE_MAX_RANGE: a year of daily points per
        user or project is 20,000 rows that no chart can show."""
        if self.until - self.since > DAILY_USAGE_MAX_RANGE:
            return Granularity.WEEK
        return self.granularity


# ---------------------------------------------------------------------------------------------
# What the panels return


@dataclass(frozen=True)
class Kpis:
    workflows: int
    completed: int
    failed: int
    cancelled: int
    in_flight_now: int  # queued or running right now (ignores the time range)
    success_rate: float | None  # completed / finished (completed + failed + cancelled)
    failure_rate: float | None  # failed / finished
    p50_duration_s: float | None  # completed runs, started_at -> finished_at
    p95_duration_s: float | None
    credits_reserved: int
    credits_refunded: int
    credits_released: int = 0  # given back for reused stills (core.reuse)

    @property
    def credits_spent(self) -> int:
        return self.credits_reserved - self.credits_refunded - self.credits_released


@dataclass(frozen=True)
class OutcomeBucket:
    start: datetime
    completed: int
    failed: int
    cancelled: int
    in_flight: int

    @property
    def total(self) -> int:
        return self.completed + self.failed + self.cancelled + self.in_flight


@dataclass(frozen=True)
class StepDuration:
    step: str
    count: int  # completed steps
    p50_s: float | None
    p95_s: float | None
    mean_s: float | None
    max_s: float | None
    # Counts per histogram bin: bins[i] is [edge i-1, edge i) of (0, *HISTOGRAM_EDGES_S), the
    # last bin open-ended. `histogram()` turns them into chart rows.
    bins: tuple[int, ...] = ()


@dataclass(frozen=True)
class HistogramBin:
    step: str
    lower_s: float
    upper_s: float | None  # None: open-ended last bin
    count: int


@dataclass(frozen=True)
class FailureReason:
    step: str | None  # None: the run failed before any step did (e.g. recovered while queued)
    category: str | None
    count: int
    example: str | None  # one of the messages


@dataclass(frozen=True)
class ErrorCode:
    step: str | None
    provider: str
    operation: str
    outcome: str  # transient | permanent | error
    error_code: str | None
    status_code: int | None
    count: int


@dataclass(frozen=True)
class ProviderStats:
    """Provider calls. `calls` counts attempts; a retried call is several attempts.

    error_rate: attempts that did not end ok / attempts.
    transient_rate: attempts that ended with a transient (retryable) error / attempts.
    retried_share: logical calls that needed at least one retry / logical calls, i.e. attempts
    numbered 2 / attempts numbered 1 (every retried call has exactly one attempt 2).
    """

    provider: str
    operation: str
    calls: int
    first_attempts: int
    retries: int  # attempts numbered 2
    errors: int
    transient: int
    p50_ms: float | None
    p95_ms: float | None
    cost_usd: float  # list prices, recorded per successful call

    @property
    def error_rate(self) -> float | None:
        return _ratio(self.errors, self.calls)

    @property
    def transient_rate(self) -> float | None:
        return _ratio(self.transient, self.calls)

    @property
    def retried_share(self) -> float | None:
        return _ratio(self.retries, self.first_attempts)


@dataclass(frozen=True)
class ProviderTotals:
    """One provider's calls summed over its operations (no percentiles: see ProviderStats)."""

    provider: str
    calls: int
    first_attempts: int
    retries: int
    errors: int
    transient: int
    cost_usd: float

    @property
    def error_rate(self) -> float | None:
        return _ratio(self.errors, self.calls)

    @property
    def retried_share(self) -> float | None:
        return _ratio(self.retries, self.first_attempts)


@dataclass(frozen=True)
class CreditUsage:
    start: datetime
    key: int | None  # user id or project id (None: runs without a project)
    label: str  # email or project name
    reserved: int
    refunded: int
    released: int = 0  # given back for reused stills

    @property
    def spent(self) -> int:
        return self.reserved - self.refunded - self.released


@dataclass(frozen=True)
class ReuseStats:
    """Stills reused instead of generated: cache hits (api_calls "reuse" rows started in the
    range) and the credits their runs got back (ledger "release" rows written in it)."""

    hits: int
    credits_saved: int


@dataclass(frozen=True)
class DeliveredCost:
    """What delivered videos really cost, over the finished runs (completed, failed, cancelled)
    created in the range, grouped by `key` (a bucket start, model, user id or project id).

    Credits come from the ledger: reserved at start, minus refunds (failed and cancelled runs),
    minus releases (reused stills). List price is the provider's price of every priced call of
    those runs, including the calls of runs that then failed or were cancelled (an image made
    for a run whose video failed is paid to the provider all the same); failed attempts are
    priced 0, as providers bill only what they deliver. Per delivered video, everything spent
    is divided by the completed runs alone; "waste" is what went to runs that delivered nothing.
    Runs still in flight are left out: their cost is not known yet.
    """

    key: Any
    label: str
    runs: int
    delivered: int
    credits_reserved: int
    credits_refunded: int
    credits_saved: int
    delivered_credits: int  # net credits of the completed runs
    list_usd: float
    delivered_list_usd: float  # list price of the completed runs' calls

    @property
    def credits_spent(self) -> int:
        return self.credits_reserved - self.credits_refunded - self.credits_saved

    @property
    def credits_per_video(self) -> float | None:
        return _ratio(self.credits_spent, self.delivered)

    @property
    def usd_per_video(self) -> float | None:
        return _ratio(self.list_usd, self.delivered)

    @property
    def waste_credits(self) -> int:
        """Credits kept for runs that delivered nothing: 0 while every failure is refunded."""
        return self.credits_spent - self.delivered_credits

    @property
    def waste_usd(self) -> float:
        return round(self.list_usd - self.delivered_list_usd, 4)

    @property
    def refunded_share(self) -> float | None:
        """Refunded credits / credits reserved at start."""
        return _ratio(self.credits_refunded, self.credits_reserved)


@dataclass(frozen=True)
class FilterChoices:
    users: list[tuple[int, str]]  # (id, email)
    projects: list[tuple[int, str, int]]  # (id, name, owner id)
    providers: list[str]


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


# ---------------------------------------------------------------------------------------------
# Panels


def kpis(session: Session, flt: MonitoringFilter) -> Kpis:
    """The headline numbers of the range (and the runs in flight right now)."""
    _tune(session)
    runs = (
        select(Workflow.status, _run_duration_ms(session).label("ms"))
        .where(_created_in(flt), *_run_scope(flt))
        .subquery()
    )
    row = _aggregate(
        session,
        runs,
        keys=(),
        value="ms",
        percentiles=(0.5, 0.95),
        measures=lambda c: [
            func.count().label("workflows"),
            *(_count_if(c.status == s.value, s.value) for s in _FINISHED),
        ],
    )[0]
    finished = row["completed"] + row["failed"] + row["cancelled"]
    spent = credit_totals(session, flt)
    in_flight = session.execute(
        select(func.count()).where(Workflow.status.in_(IN_FLIGHT), *_run_scope(flt))
    ).scalar_one()
    return Kpis(
        workflows=row["workflows"],
        completed=row["completed"],
        failed=row["failed"],
        cancelled=row["cancelled"],
        in_flight_now=in_flight,
        success_rate=_ratio(row["completed"], finished),
        failure_rate=_ratio(row["failed"], finished),
        p50_duration_s=_seconds(row["p0"]),
        p95_duration_s=_seconds(row["p1"]),
        credits_reserved=spent[0],
        credits_refunded=spent[1],
        credits_released=spent[2],
    )


_FINISHED = (WorkflowStatus.COMPLETED, WorkflowStatus.FAILED, WorkflowStatus.CANCELLED)
_RUN_MOVES = ("reserve", "refund", "release")  # the ledger rows a run writes
_CREDIT_MOVES = ("reserved", "refunded", "released")  # their columns in _ledger_moves


def credit_totals(session: Session, flt: MonitoringFilter) -> tuple[int, int, int]:
    """(reserved, refunded, released for reused stills) credits in the range, from the ledger
    (its rollup for the closed days)."""
    moves = _ledger_moves(session, flt, Granularity.DAY)
    row = session.execute(
        select(
            func.coalesce(func.sum(moves.c.reserved), 0),
            func.coalesce(func.sum(moves.c.refunded), 0),
            func.coalesce(func.sum(moves.c.released), 0),
        )
    ).one()
    return int(row[0]), int(row[1]), int(row[2])


def _ledger_moves(session: Session, flt: MonitoringFilter, granularity: Granularity) -> Subquery:
    """The run ledger rows of the range the filter's user and project allow, as (bucket,
    user_id, project_id, workflow_id_set, reserved, refunded, released): day sums for the
    closed days of the range, raw rows for the rest."""
    split = _split(session, "ledger", flt, granularity)
    raw = rollup.ledger_moves(
        session,
        split.raw(CreditTransaction.created_at),
        *_narrowing(flt, CreditTransaction.user_id, Workflow.project_id),
    ).subquery()
    rolled = LedgerDayRollup
    parts = [
        select(
            _bucket(session, raw.c.created_at, granularity).label("bucket"),
            raw.c.user_id,
            raw.c.project_id,
            raw.c.workflow_id_set,
            raw.c.reserved,
            raw.c.refunded,
            raw.c.released,
        )
    ]
    if split.rolled:
        parts.append(
            select(
                _bucket(session, rolled.day, granularity),
                rolled.user_id,
                rolled.project_id,
                rolled.workflow_id_set,
                rolled.reserved,
                rolled.refunded,
                rolled.released,
            ).where(split.rollup(rolled.day), *_narrowing(flt, rolled.user_id, rolled.project_id))
        )
    return union_all(*parts).subquery()


def outcomes_over_time(session: Session, flt: MonitoringFilter) -> list[OutcomeBucket]:
    """Runs per bucket by how they ended; every bucket of the range is present (zeros too)."""
    _tune(session)
    # Closed days hold no run in flight: their finished runs' rollup counts them all.
    split = _split(session, "runs", flt, flt.granularity)
    rolled = RunDayRollup.__table__.c
    parts = [
        select(
            _bucket(session, Workflow.created_at, flt.granularity).label("bucket"),
            Workflow.status,
            literal(1).label("runs"),
        ).where(split.raw(Workflow.created_at), *_run_scope(flt))
    ]
    if split.rolled:
        parts.append(
            select(_bucket(session, rolled.day, flt.granularity), rolled.status, rolled.runs).where(
                split.rollup(rolled.day), *_narrowing(flt, rolled.user_id, rolled.project_id)
            )
        )
    runs = union_all(*parts).subquery()
    status, count = runs.c.status, runs.c.runs
    rows = session.execute(
        select(
            runs.c.bucket,
            *(_sum_if(count, status == s.value, s.value) for s in _FINISHED),
            _sum_if(count, status.in_(IN_FLIGHT), "in_flight"),
        ).group_by(runs.c.bucket)
    )
    found = {_as_utc(r.bucket): r for r in rows}
    buckets = []
    for start in bucket_starts(flt, flt.granularity):
        r = found.get(start)
        buckets.append(
            OutcomeBucket(
                start=start,
                completed=r.completed if r else 0,
                failed=r.failed if r else 0,
                cancelled=r.cancelled if r else 0,
                in_flight=r.in_flight if r else 0,
            )
        )
    return buckets


def bucket_starts(flt: MonitoringFilter, granularity: Granularity) -> list[datetime]:
    """The starts of every bucket overlapping the range (UTC hours, days or Mondays)."""
    start = flt.since.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    if granularity is not Granularity.HOUR:
        start = start.replace(hour=0)
    if granularity is Granularity.WEEK:
        start -= timedelta(days=start.weekday())
    starts = []
    while start < flt.until:
        starts.append(start)
        start += granularity.step
    return starts


def step_durations(session: Session, flt: MonitoringFilter) -> list[StepDuration]:
    """Per step, in pipeline order: count, p50/p95/mean/max of completed steps' durations and
    their histogram over HISTOGRAM_EDGES_S (one scan feeds both charts)."""
    _tune(session)
    steps = WorkflowStep.__table__
    edges_ms = rollup.HISTOGRAM_EDGES_MS
    # As in provider_performance: the counts and the percentiles' buckets from the rollup
    # where it serves the filter.
    split = _split(session, "steps", flt, flt.granularity, narrowable=False)

    def measures(c: Any) -> list[ColumnElement[Any]]:
        # Cumulative counts (one comparison per edge), turned into bins below.
        ms = c.duration_ms
        below = [_count_if(ms < edge, f"below{i}") for i, edge in enumerate(edges_ms)]
        return [
            func.count(ms).label("n"),
            func.sum(ms).label("sum"),
            func.max(ms).label("max"),
            *below,
        ]

    completed_in_range = [
        steps.c.status == StepStatus.COMPLETED.value,
        steps.c.started_at >= flt.since,
        steps.c.started_at < flt.until,
    ]
    if split.rolled:
        rows = _step_counts(session, split, completed_in_range)
    else:
        rows = _grouped_percentiles(
            session,
            table=steps,
            where=[*completed_in_range, *_runs_of(flt, steps.c.workflow_id)],
            keys=("name",),
            value="duration_ms",
            reads=(),
            measures=measures,
        )
    by_name = {r["name"]: r for r in rows}
    return [
        StepDuration(
            step=name.value,
            count=r["n"],
            p50_s=_seconds(r["p0"]),
            p95_s=_seconds(r["p1"]),
            mean_s=_seconds(r["sum"] / r["n"]),
            max_s=_seconds(r["max"]),
            bins=_bins([r[f"below{i}"] for i in range(len(edges_ms))], r["n"]),
        )
        for name in STEP_ORDER
        if (r := by_name.get(name.value)) is not None and r["n"]
    ]


def _step_counts(
    session: Session, split: rollup.Split, completed_in_range: list[ColumnElement[bool]]
) -> list[dict[str, Any]]:
    """step_durations' rows where the split has rolled-up days: per step n, sum, max and
    below<i> (cumulative counts below each histogram edge), as its one-pass measures give them
    (raw steps outside those days, day sums inside), and percentiles p0, p1 found through the
    duration buckets (`completed_in_range`: the steps they rank)."""
    steps = WorkflowStep.__table__.c
    rolled = StepDayRollup.__table__.c
    raw = rollup.step_bins(steps, split.raw(steps.started_at))
    days = select(
        rolled.name, rolled.bin, rolled.bucket_ms, rolled["count"], rolled.sum_ms, rolled.max_ms
    ).where(split.rollup(rolled.day))
    both = union_all(raw, days).subquery()
    keys = (both.c.name, both.c.bin, both.c.bucket_ms)
    rows = session.execute(
        select(
            *keys,
            func.sum(both.c["count"]).label("count"),
            func.sum(both.c.sum_ms).label("sum_ms"),
            func.max(both.c.max_ms).label("max_ms"),
        ).group_by(*keys)
    )
    edges = len(rollup.HISTOGRAM_EDGES_MS)
    counts: dict[str, dict[str, Any]] = {}
    bins: dict[str, list[int]] = {}
    buckets: dict[str, dict[int, int]] = {}
    for name, bin_, bucket, count, sum_ms, max_ms in rows:
        c = counts.setdefault(name, {"name": name, "n": 0, "sum": 0, "max": 0})
        c["n"] += int(count)
        c["sum"] += int(sum_ms)
        c["max"] = max(c["max"], int(max_ms))
        bins.setdefault(name, [0] * (edges + 1))[bin_] += int(count)
        by_bucket = buckets.setdefault(name, {})
        by_bucket[bucket] = by_bucket.get(bucket, 0) + int(count)
    for name, c in counts.items():
        below = itertools.accumulate(bins[name][:edges])  # bin b lies below edges b, b+1, ...
        c.update({f"below{i}": count for i, count in enumerate(below)})

    def values_of(name: str) -> Select:
        return select(steps.duration_ms).where(steps.name == name, *completed_in_range)

    values = _bucketed_percentiles(session, buckets, values_of, steps.duration_ms)
    return [{**c, **values[name]} for name, c in counts.items()]


def _bins(below: Sequence[int], total: int) -> tuple[int, ...]:
    """Counts per bin from cumulative counts below each edge."""
    edges = [0, *below, total]
    return tuple(int(edges[i + 1] - edges[i]) for i in range(len(edges) - 1))


def histogram(durations: Sequence[StepDuration]) -> list[HistogramBin]:
    """The step_durations histograms as one row per (step, bin), empty bins left out (pure)."""
    lowers = (0.0, *HISTOGRAM_EDGES_S)
    uppers = (*HISTOGRAM_EDGES_S, None)
    return [
        HistogramBin(step=d.step, lower_s=float(lowers[i]), upper_s=uppers[i], count=count)
        for d in durations
        for i, count in enumerate(d.bins)
        if count
    ]


def failure_reasons(session: Session, flt: MonitoringFilter) -> list[FailureReason]:
    """Failed runs by the step that failed and the failure category, most frequent first."""
    _tune(session)
    failed_step = WorkflowStep.__table__.alias("failed_step")
    count = func.count().label("n")
    rows = session.execute(
        select(
            failed_step.c.name,
            Workflow.error_category,
            count,
            func.min(Workflow.error_message).label("example"),
        )
        .select_from(Workflow)
        .outerjoin(
            failed_step,
            and_(
                failed_step.c.workflow_id == Workflow.id,
                failed_step.c.status == StepStatus.FAILED.value,
            ),
        )
        .where(Workflow.status == WorkflowStatus.FAILED.value, _created_in(flt), *_run_scope(flt))
        .group_by(failed_step.c.name, Workflow.error_category)
    )
    reasons = [
        FailureReason(step=r.name, category=r.error_category, count=r.n, example=r.example)
        for r in rows
    ]
    # Sorted here: the databases disagree on where NULLs sort.
    return sorted(reasons, key=lambda r: (-r.count, r.step or "", r.category or ""))


def error_codes(session: Session, flt: MonitoringFilter) -> list[ErrorCode]:
    """Provider attempts that did not end ok, by step, provider, operation and error code."""
    _tune(session)
    keys = (
        ApiCall.step,
        ApiCall.provider,
        ApiCall.operation,
        ApiCall.outcome,
        ApiCall.error_code,
        ApiCall.status_code,
    )
    rows = session.execute(
        select(*keys, func.count().label("n")).where(_NOT_OK, *_call_scope(flt)).group_by(*keys)
    )
    codes = [
        ErrorCode(
            step=r.step,
            provider=r.provider,
            operation=r.operation,
            outcome=r.outcome,
            error_code=r.error_code,
            status_code=r.status_code,
            count=r.n,
        )
        for r in rows
    ]
    return sorted(
        codes,
        key=lambda c: (
            -c.count,
            c.step or "",
            c.provider,
            c.operation,
            c.outcome,
            c.error_code or "",
            c.status_code or 0,
        ),
    )


def provider_performance(session: Session, flt: MonitoringFilter) -> list[ProviderStats]:
    """Latency percentiles, error and retry rates, calls and list-price USD per provider and
    operation. (Per provider, latencies would mix a 50 ms HEAD with a 15 s image: sum the rows
    with provider_totals for calls and USD instead.)"""
    _tune(session)
    # Where the rollup serves the filter (it knows no users nor projects): the counts from it,
    # and the percentiles from its bucket counts and the few rows of the buckets holding them.
    split = _split(session, "calls", flt, flt.granularity, narrowable=False)
    if split.rolled:
        rows = _call_counts(session, flt, split)
    else:
        rows = _grouped_percentiles(
            session,
            table=ApiCall.__table__,
            where=_call_scope(flt),
            keys=("provider", "operation"),
            value="duration_ms",
            reads=("attempt", "outcome", "cost_usd"),
            measures=rollup.call_counts,
        )
    stats = [
        ProviderStats(
            provider=r["provider"],
            operation=r["operation"],
            calls=int(r["calls"]),
            first_attempts=int(r["first_attempts"]),
            retries=int(r["retries"]),
            errors=int(r["errors"]),
            transient=int(r["transient"]),
            p50_ms=_float(r["p0"]),
            p95_ms=_float(r["p1"]),
            cost_usd=round(float(r["cost"] or 0), 4),
        )
        for r in rows
    ]
    return sorted(stats, key=lambda s: (s.provider, s.operation))


def _call_counts(
    session: Session, flt: MonitoringFilter, split: rollup.Split
) -> list[dict[str, Any]]:
    """provider_performance's rows per (provider, operation) where the split has rolled-up
    days: rollup.call_counts (raw calls outside those days, day sums inside) and percentiles
    p0, p1 found through the latency buckets."""
    calls = ApiCall.__table__.c
    only = [] if flt.provider is None else [calls.provider == flt.provider]
    raw = rollup.call_buckets(calls, and_(split.raw(calls.started_at), *only))
    rolled = CallDayRollup.__table__.c
    names = ("calls", "first_attempts", "retries", "errors", "transient", "cost")
    days = select(
        rolled.provider, rolled.operation, rolled.bucket_ms, *(rolled[n] for n in names)
    ).where(
        split.rollup(rolled.day),
        *([] if flt.provider is None else [rolled.provider == flt.provider]),
    )
    both = union_all(raw, days).subquery()
    keys = (both.c.provider, both.c.operation, both.c.bucket_ms)
    rows = session.execute(
        select(*keys, *(func.sum(both.c[n]).label(n) for n in names)).group_by(*keys)
    )
    found: dict[tuple[str, str], dict[str, Any]] = {}
    buckets: dict[tuple[str, str], dict[int, int]] = {}
    for r in rows:
        key = (r.provider, r.operation)
        sums = found.setdefault(key, {"provider": r.provider, "operation": r.operation})
        for n in names:
            if r._mapping[n] is not None:
                sums[n] = sums.get(n, 0) + r._mapping[n]
        buckets.setdefault(key, {})[int(r.bucket_ms)] = int(r.calls)

    def values_of(key: tuple[str, str]) -> Select:
        return select(calls.duration_ms).where(
            calls.provider == key[0],
            calls.operation == key[1],
            calls.started_at >= flt.since,
            calls.started_at < flt.until,
        )

    values = _bucketed_percentiles(session, buckets, values_of, calls.duration_ms)
    return [{**sums, "cost": sums.get("cost"), **values[key]} for key, sums in found.items()]


def _only_provider(flt: MonitoringFilter, column: Any) -> list[ColumnElement[bool]]:
    return [] if flt.provider is None else [column == flt.provider]


def provider_totals(stats: Sequence[ProviderStats]) -> list[ProviderTotals]:
    """provider_performance rows summed per provider: calls, errors, retries and USD (pure)."""
    totals: dict[str, list[Any]] = {}
    for s in stats:
        t = totals.setdefault(s.provider, [0, 0, 0, 0, 0, 0.0])
        for i, v in enumerate(
            (s.calls, s.first_attempts, s.retries, s.errors, s.transient, s.cost_usd)
        ):
            t[i] += v
    return [
        ProviderTotals(
            provider=p,
            calls=t[0],
            first_attempts=t[1],
            retries=t[2],
            errors=t[3],
            transient=t[4],
            cost_usd=round(t[5], 4),
        )
        for p, t in sorted(totals.items())
    ]


def credit_usage(
    session: Session,
    flt: MonitoringFilter,
    *,
    by: Literal["user", "project"] = "user",
    granularity: Granularity | None = None,
) -> list[CreditUsage]:
    """Credits reserved and refunded per bucket and user (or project), from the ledger; only
    non-empty buckets (default buckets: `flt.usage_granularity`)."""
    _tune(session)
    granularity = granularity or flt.usage_granularity
    moves = _ledger_moves(session, flt, granularity)
    key = moves.c.user_id if by == "user" else moves.c.project_id
    runs_only = [moves.c.workflow_id_set.is_(True)] if by == "project" else []
    totals = (
        select(
            moves.c.bucket,
            key.label("key"),
            # Sums of integers as integers: Postgres sums bigints as numeric, and decoding
            # thousands of Decimals costs more than the sum.
            *(cast(func.sum(moves.c[m]), BigInteger).label(m) for m in _CREDIT_MOVES),
        )
        .where(*runs_only)
        .group_by(moves.c.bucket, key)
        .subquery()
    )
    label_of = User.email if by == "user" else Project.name
    owner = User if by == "user" else Project
    rows = session.execute(
        select(totals, label_of.label("label")).outerjoin(owner, owner.id == totals.c.key)
    )
    starts: dict[Any, datetime] = {}  # a few dozen distinct buckets, thousands of rows
    usage = [
        CreditUsage(
            start=starts.get(bucket) or starts.setdefault(bucket, _as_utc(bucket)),
            key=key,
            label=label or "(no project)",
            reserved=reserved,
            refunded=refunded,
            released=released,
        )
        for bucket, key, reserved, refunded, released, label in rows
    ]
    # Sorted here (runs without a project last): the databases disagree on where NULLs sort.
    return sorted(usage, key=lambda u: (u.start, u.key is None, u.key or 0))


def reuse_stats(session: Session, flt: MonitoringFilter) -> ReuseStats:
    """Cache hits through ix_api_calls_provider_operation_duration, credits saved through
    ix_credit_transactions_kind_created."""
    hits = session.execute(
        select(func.count()).where(
            ApiCall.provider == REUSE_PROVIDER,
            ApiCall.operation == REUSE_OPERATION,
            ApiCall.outcome == "ok",
            *_call_scope(replace(flt, provider=None)),
        )
    ).scalar_one()
    saved = session.execute(
        select(func.coalesce(func.sum(CreditTransaction.amount), 0)).where(
            *_ledger_scope(flt), CreditTransaction.kind == "release"
        )
    ).scalar_one()
    return ReuseStats(hits=hits, credits_saved=int(saved))


DeliveredBy = Literal["time", "model", "user", "project"]
DELIVERED_BY: tuple[DeliveredBy, ...] = ("time", "model", "user", "project")


@dataclass(frozen=True)
class DeliveredCosts:
    """delivered_cost's four groupings of the same runs; `total` is the range's one figure."""

    by_time: list[DeliveredCost]  # buckets of flt.usage_granularity, in time order
    by_model: list[DeliveredCost]  # the video model: by far the larger part of the price
    by_user: list[DeliveredCost]
    by_project: list[DeliveredCost]

    @property
    def total(self) -> DeliveredCost:
        return delivered_total(self.by_time)

    def by(self, key: DeliveredBy) -> list[DeliveredCost]:
        return getattr(self, f"by_{key}")


def delivered_cost(session: Session, flt: MonitoringFilter) -> DeliveredCosts:
    """DeliveredCost per bucket, video model, user and project (only non-empty groups), in
    one statement: the runs' facts are gathered once (a CTE used four times, which both
    databases materialise once) and then grouped four ways.

    Per run: its refund and release ledger rows (ix_credit_transactions_kind_created: a run's
    rows are written after its creation, so `created_at >= since` bounds them) and its priced
    calls (ix_api_calls_priced, index-only, bounded by start time the same way).
    """
    _tune(session)
    facts = _run_facts(session, flt)
    done = facts.c.status == WorkflowStatus.COMPLETED.value
    measures = [
        func.sum(facts.c.runs).label("runs"),
        _sum_if(facts.c.runs, done, "delivered"),
        func.sum(facts.c.reserved).label("reserved"),
        func.sum(facts.c.refunded).label("refunded"),
        func.sum(facts.c.released).label("released"),
        func.sum(case((done, facts.c.net), else_=0)).label("delivered_credits"),
        func.sum(facts.c.usd).label("usd"),
        func.sum(case((done, facts.c.usd), else_=0)).label("delivered_usd"),
    ]
    keys = {"time": "bucket", "model": "model", "user": "user_id", "project": "project_id"}
    # Typed NULLs where a branch does not group: Postgres types a UNION column pairwise.
    bucket_type = DateTime(timezone=True) if _dialect(session) == "postgresql" else String()
    types = {
        "bucket": bucket_type,
        "model": String(),
        "user_id": Integer(),
        "project_id": Integer(),
    }
    groupings = [
        select(
            literal(by).label("grouping"),
            *(
                (facts.c[column] if name == by else cast(null(), types[column])).label(column)
                for name, column in keys.items()
            ),
            *measures,
        ).group_by(facts.c[keys[by]])
        for by in DELIVERED_BY
    ]
    rows = session.execute(union_all(*groupings)).all()
    labels = _delivered_labels(session, rows)
    found: dict[str, list[DeliveredCost]] = {by: [] for by in DELIVERED_BY}
    for r in rows:
        key = getattr(r, keys[r.grouping])
        if r.grouping == "time":
            key = _as_utc(key)
        found[r.grouping].append(
            DeliveredCost(
                key=key,
                label=labels[r.grouping].get(key, str(key)),
                runs=int(r.runs),
                delivered=int(r.delivered),
                credits_reserved=int(r.reserved),
                credits_refunded=int(r.refunded),
                credits_saved=int(r.released),
                delivered_credits=int(r.delivered_credits),
                list_usd=round(float(r.usd), 4),
                delivered_list_usd=round(float(r.delivered_usd), 4),
            )
        )
    costliest = lambda c: (-c.list_usd, -c.credits_spent, c.label)  # noqa: E731
    return DeliveredCosts(
        by_time=sorted(found["time"], key=lambda c: c.key),
        by_model=sorted(found["model"], key=costliest),
        by_user=sorted(found["user"], key=costliest),
        by_project=sorted(found["project"], key=costliest),
    )


def _run_facts(session: Session, flt: MonitoringFilter) -> Any:
    """The finished runs created in the range summed per (bucket, status, model, user_id,
    project_id) as runs, reserved, refunded, released, net, usd: from the rollup's day sums for
    the closed days, from the runs themselves for the rest."""
    granularity = flt.usage_granularity
    split = _split(session, "runs", flt, granularity)
    # The few runs of the raw edges look up their own rows; a range read raw throughout sums
    # every run's rows at once.
    bound = None if split.rolled else flt.since
    raw = rollup.run_facts(
        session, split.raw(Workflow.created_at), *_run_scope(flt), bound=bound
    ).subquery()
    measures = ("reserved", "refunded", "released", "net", "usd")
    groups = ("status", "model", "user_id", "project_id")
    parts = [
        select(
            _bucket(session, raw.c.created_at, granularity).label("bucket"),
            *(raw.c[g] for g in groups),
            literal(1).label("runs"),
            *(raw.c[m] for m in measures),
        )
    ]
    if split.rolled:
        rolled = RunDayRollup.__table__.c
        parts.append(
            select(
                _bucket(session, rolled.day, granularity),
                *(rolled[g] for g in groups),
                rolled.runs,
                *(rolled[m] for m in measures),
            ).where(split.rollup(rolled.day), *_narrowing(flt, rolled.user_id, rolled.project_id))
        )
    # Summed per bucket and group first: a year's rollup holds about one row per day and group
    # (57,000 at 100,000 runs), five times the rows per week and group that the four groupings
    # then read.
    facts = union_all(*parts).subquery()
    keys = [facts.c.bucket, *(facts.c[g] for g in groups)]
    return (
        select(*keys, *(func.sum(facts.c[m]).label(m) for m in ("runs", *measures)))
        .group_by(*keys)
        .cte("run_facts")
    )


def _delivered_labels(session: Session, rows: Sequence[Any]) -> dict[str, dict[Any, str]]:
    """Names for the keys: emails, project names, bucket starts; models name themselves."""
    users = {r.user_id for r in rows if r.grouping == "user"}
    projects = {r.project_id for r in rows if r.grouping == "project"} - {None}
    emails = session.execute(select(User.id, User.email).where(User.id.in_(users))).all()
    names = session.execute(select(Project.id, Project.name).where(Project.id.in_(projects)))
    return {
        "time": {},
        "model": {r.model: r.model for r in rows if r.grouping == "model"},
        "user": dict(emails),
        "project": {None: "(no project)", **dict(names.all())},
    }


def delivered_total(rows: Sequence[DeliveredCost]) -> DeliveredCost:
    """delivered_cost rows summed into one (pure): every figure is a sum or a ratio of sums."""
    return DeliveredCost(
        key=None,
        label="all",
        runs=sum(r.runs for r in rows),
        delivered=sum(r.delivered for r in rows),
        credits_reserved=sum(r.credits_reserved for r in rows),
        credits_refunded=sum(r.credits_refunded for r in rows),
        credits_saved=sum(r.credits_saved for r in rows),
        delivered_credits=sum(r.delivered_credits for r in rows),
        list_usd=round(sum(r.list_usd for r in rows), 4),
        delivered_list_usd=round(sum(r.delivered_list_usd for r in rows), 4),
    )


def filter_choices(session: Session) -> FilterChoices:
    """What the filter widgets offer: every user, every project, every provider ever called."""
    users = session.execute(select(User.id, User.email).order_by(User.email)).all()
    projects = session.execute(
        select(Project.id, Project.name, Project.user_id).order_by(Project.name, Project.id)
    ).all()
    return FilterChoices(
        users=[(r.id, r.email) for r in users],
        projects=[(r.id, r.name, r.user_id) for r in projects],
        providers=providers(session),
    )


def providers(session: Session) -> list[str]:
    """Distinct providers, by skipping through the (provider, started_at) index: a loose index
    scan in a recursive CTE costs one probe per provider instead of a scan of every call."""
    rows = session.execute(
        text(
            "WITH RECURSIVE p(name) AS ("
            " SELECT min(provider) FROM api_calls"
            " UNION ALL"
            " SELECT (SELECT min(provider) FROM api_calls WHERE provider > p.name)"
            " FROM p WHERE p.name IS NOT NULL)"
            " SELECT name FROM p WHERE name IS NOT NULL"
        )
    )
    return list(rows.scalars())


# ---------------------------------------------------------------------------------------------
# CSV export


def to_csv(items: Sequence[Any]) -> str:
    """The rows a panel returned (dataclasses), as CSV text with a header, for a download button.
    Properties (rates, spent) are included as columns."""
    if not items:
        return ""
    first = items[0]
    names = [f.name for f in fields(first)]
    extra = [
        name
        for name in dir(type(first))
        if isinstance(getattr(type(first), name), property) and not name.startswith("_")
    ]
    buffer = io.StringIO()
    out = csv.writer(buffer, lineterminator="\n")
    out.writerow([*names, *extra])
    for item in items:
        values = asdict(item)
        out.writerow([*(values[n] for n in names), *(getattr(item, n) for n in extra)])
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Scopes, durations, buckets and percentiles in SQL


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def _created_in(flt: MonitoringFilter) -> ColumnElement[bool]:
    return and_(Workflow.created_at >= flt.since, Workflow.created_at < flt.until)


def _run_scope(flt: MonitoringFilter) -> list[ColumnElement[bool]]:
    return _narrowing(flt, Workflow.user_id, Workflow.project_id)


def _runs_of(flt: MonitoringFilter, workflow_id: Any) -> list[ColumnElement[bool]]:
    """Conditions that keep rows (steps, calls, ledger) of the runs the filter's user and
    project allow; none when neither is set."""
    scope = _run_scope(flt)
    return [workflow_id.in_(select(Workflow.id).where(*scope))] if scope else []


def _call_scope(flt: MonitoringFilter) -> list[ColumnElement[bool]]:
    scope = [ApiCall.started_at >= flt.since, ApiCall.started_at < flt.until]
    if flt.provider is not None:
        scope.append(ApiCall.provider == flt.provider)
    return scope + _runs_of(flt, ApiCall.workflow_id)


def _split(
    session: Session,
    kind: rollup.Kind,
    flt: MonitoringFilter,
    granularity: Granularity,
    *,
    narrowable: bool = True,
) -> rollup.Split:
    """The range cut into rolled-up closed days and raw rest; hourly buckets read raw only (a
    day's rollup has no hours, and two days of raw rows are few), and so does a filter by user
    or project on a rollup that has neither (not `narrowable`)."""
    narrowed = flt.user_id is not None or flt.project_id is not None
    if granularity is Granularity.HOUR or (narrowed and not narrowable):
        return rollup.Split.unrolled(flt.since, flt.until)
    return rollup.split(session, kind, flt.since, flt.until)


def _narrowing(flt: MonitoringFilter, user_id: Any, project_id: Any) -> list[ColumnElement[bool]]:
    """The filter's user and project on the given columns (a run's, a ledger row's joined to its
    run, a rollup's)."""
    scope = []
    if flt.user_id is not None:
        scope.append(user_id == flt.user_id)
    if flt.project_id is not None:
        scope.append(project_id == flt.project_id)
    return scope


def _ledger_scope(flt: MonitoringFilter) -> list[ColumnElement[bool]]:
    scope = [
        CreditTransaction.created_at >= flt.since,
        CreditTransaction.created_at < flt.until,
        CreditTransaction.kind.in_(_RUN_MOVES),
    ]
    if flt.user_id is not None:
        scope.append(CreditTransaction.user_id == flt.user_id)
    if flt.project_id is not None:
        in_project = select(Workflow.id).where(Workflow.project_id == flt.project_id)
        scope.append(CreditTransaction.workflow_id.in_(in_project))
    return scope


def _duration_ms(session: Session, start: Any, end: Any) -> ColumnElement[float]:
    """Whole milliseconds from start to end, exact on both databases (see the module doc)."""
    if _dialect(session) == "postgresql":
        return cast(func.round(extract("epoch", end - start) * 1000), Float)
    # SQLite keeps 'YYYY-MM-DD HH:MM:SS.ffffff': whole seconds by strftime, microseconds by text.
    micros = (func.strftime("%s", end) - func.strftime("%s", start)) * 1_000_000 + (
        func.substr(end, 21, 6) - func.substr(start, 21, 6)
    )
    return func.round(micros / 1000.0)


def _run_duration_ms(session: Session) -> ColumnElement[float]:
    completed = Workflow.status == WorkflowStatus.COMPLETED.value
    return case(
        (completed, _duration_ms(session, Workflow.started_at, Workflow.finished_at)),
        else_=None,
    )


# date_bin needs no time-zone lookups per row (date_trunc with a zone does); 2001-01-01 was a
# Monday, so 7-day bins start on Mondays. Postgres 14 or newer.
_BIN_ORIGIN = "TIMESTAMPTZ '2001-01-01 00:00:00+00'"
_BIN_WIDTH = {"hour": "1 hour", "day": "1 day", "week": "7 days"}


def _bucket(session: Session, column: Any, granularity: Granularity) -> ColumnElement[Any]:
    if _dialect(session) == "postgresql":
        width = literal_column(f"INTERVAL '{_BIN_WIDTH[granularity.value]}'")
        return func.date_bin(width, column, literal_column(_BIN_ORIGIN))
    if granularity is Granularity.WEEK:  # back six days, then forward to a Monday
        return func.strftime(
            literal_column("'%Y-%m-%d 00:00:00'"),
            column,
            literal_column("'-6 days'"),
            literal_column("'weekday 1'"),
        )
    pattern = "%Y-%m-%d %H:00:00" if granularity is Granularity.HOUR else "%Y-%m-%d 00:00:00"
    return func.strftime(literal_column(f"'{pattern}'"), column)


def _as_utc(value: datetime | str) -> datetime:
    if isinstance(value, str):  # SQLite's strftime bucket
        return datetime.strptime(value, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


def _count_if(condition: ColumnElement[bool], label: str) -> ColumnElement[int]:
    # COUNT(*) FILTER (WHERE ...): cheaper than SUM(CASE ...) on Postgres; SQLite has it too.
    return func.count().filter(condition).label(label)


def _sum_if(value: Any, condition: ColumnElement[bool], label: str) -> ColumnElement[int]:
    return func.coalesce(func.sum(value).filter(condition), 0).label(label)


def _seconds(ms: Any) -> float | None:
    return None if ms is None else float(ms) / 1000


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _tune(session: Session) -> None:
    """Postgres, for this read transaction only (set_config(..., true) is SET LOCAL): no JIT
    (compiling costs more than it saves on these short scans), room to sort a year of values in
    memory, and a random_page_cost for cached/SSD pages, at which the planner picks the covering
    index-only scans (at the default 4.0 it often prefers the wide heap). Together about 10%
    of the year-long total in bench/monitoring.py; the indexes do the rest."""
    if _dialect(session) == "postgresql":
        session.execute(
            text(
                "SELECT set_config('jit', 'off', true),"
                f" set_config('work_mem', '{SORT_WORK_MEM}', true),"
                " set_config('random_page_cost', '1.1', true)"
            )
        )


def _grouped_percentiles(
    session: Session,
    *,
    table: Any,
    where: Sequence[ColumnElement[bool]],
    keys: Sequence[str],
    value: str,
    reads: Sequence[str],
    measures: Callable[[Any], list[ColumnElement[Any]]],
    percentiles: Sequence[float] = (0.5, 0.95),
) -> list[dict[str, Any]]:
    """Rows of `table` where `where` holds, grouped by the `keys` columns: the `measures` (built
    on a namespace holding the `reads` columns) and percentiles p0, p1, ... of `value`.

    On Postgres, an index on (keys..., value) makes this cheap at any range: the planner reads
    the rows in group-then-value order (index-only), and percentile_cont's sort finds its input
    already sorted (Postgres' quicksort checks for that first), so a year of values costs one
    ordered pass instead of a sort.
    """
    columns = dict.fromkeys([*keys, value, *reads])
    source = select(*(table.c[c] for c in columns)).where(*where).subquery()
    return _aggregate(
        session, source, keys=keys, value=value, percentiles=percentiles, measures=measures
    )


def _bucketed_percentiles(
    session: Session,
    buckets: dict[Any, dict[int, int]],
    values_of: Callable[[Any], Select],
    value: Any,
    percentiles: Sequence[float] = (0.5, 0.95),
) -> dict[Any, dict[str, float | None]]:
    """Per key, percentile_cont's own p0, p1, ... from the counts of its values per bucket
    ({lower edge: count}, every value of `values_of(key)` counted once). percentile_cont takes
    h = p * (n - 1) (in double precision) and gives v[floor h] + (h - floor h) *
    (v[ceil h] - v[floor h]); each of those ranks lies in one bucket, at an offset the counts
    below give, and is read from the nearer end of its bucket (an index on (key, value) reads
    only the rows up to it). One statement reads every rank of every key."""
    found: dict[Any, dict[str, float | None]] = {
        key: {f"p{i}": None for i in range(len(percentiles))} for key in buckets
    }
    wanted: list[tuple[Any, int, float]] = []  # (key, i, h)
    lookups = []
    for key, counts in buckets.items():
        n = sum(counts.values())
        for i, p in enumerate(percentiles):
            if not n:
                continue
            h = p * (n - 1)
            for ranked in _rank_lookups(values_of(key), value, counts, h):
                lookups.append(
                    select(literal(len(wanted)).label("j"), ranked.subquery().c[0].label("v"))
                )
            wanted.append((key, i, h))
    if not lookups:
        return found
    values: dict[int, list[float]] = {}
    for j, v in session.execute(union_all(*lookups)):
        values.setdefault(j, []).append(float(v))
    short = set()
    for j, (key, i, h) in enumerate(wanted):
        share = h - math.floor(h)
        read = sorted(values.get(j, ()))
        if len(read) < (2 if share else 1):
            short.add(key)
            continue
        first = read[0]
        found[key][f"p{i}"] = first + share * (read[1] - first) if share else first
    # Each statement sees what has committed when it starts: a row that left the set between
    # the counts and the lookups (a step of an unclosed day set back from completed) leaves a
    # rank unread. Those keys are read whole, as without buckets.
    for key in short:
        whole = values_of(key).subquery()
        row = _aggregate(
            session,
            whole,
            keys=(),
            value=whole.c[0].name,
            percentiles=percentiles,
            measures=lambda c: [],
        )[0]
        found[key] = {f"p{i}": row[f"p{i}"] for i in range(len(percentiles))}
    return found


def _rank_lookups(values: Select, value: Any, counts: dict[int, int], h: float) -> list[Select]:
    """Statements that read the ranks floor(h) and ceil(h) (from 0) of `values` in `value`
    order, counted per bucket in `counts`: one per bucket they lie in, from its nearer end."""
    edges = sorted(counts)
    i, offset = 0, math.floor(h)
    while offset >= counts[edges[i]]:  # an IndexError past the last: counts and h disagree
        offset -= counts[edges[i]]
        i += 1
    count = counts[edges[i]]
    take = 2 if h > math.floor(h) and offset + 1 < count else 1
    lookups = []
    if take == 1 and h > math.floor(h):  # ceil(h) is the first value of the next bucket
        lookups.append(values.where(value >= edges[i + 1]).order_by(value).limit(1))
    if offset <= count // 2:
        lookup = values.where(value >= edges[i]).order_by(value).offset(offset)
    else:
        above = [value < edges[i + 1]] if i + 1 < len(edges) else []
        lookup = values.where(value >= edges[i], *above).order_by(value.desc())
        lookup = lookup.offset(count - offset - take)
    return [*lookups, lookup.limit(take)]


def _aggregate(
    session: Session,
    source: Subquery,
    *,
    keys: Sequence[str],
    value: str,
    percentiles: Sequence[float],
    measures: Callable[[Any], list[ColumnElement[Any]]],
) -> list[dict[str, Any]]:
    """GROUP BY `keys` over `source`: the `measures` plus, for each p in `percentiles`, the
    interpolated percentile of `value` (labelled p0, p1, ...). NULL values are ignored, as
    percentile_cont ignores them, so a CASE can restrict the percentile to some rows."""
    if _dialect(session) == "postgresql":
        c = source.c
        group = [c[k] for k in keys]
        # One ordered-set aggregate for all the percentiles: one sort of the group's values
        # instead of one per percentile (about 10% of a year-long panel).
        wanted = postgresql.array([literal(p, Float) for p in percentiles])
        pcts = func.percentile_cont(wanted, type_=postgresql.ARRAY(Float)).within_group(c[value])
        query: Select = select(*group, *measures(c), pcts.label("_pcts")).group_by(*group)
        rows = [dict(r._mapping) for r in session.execute(query)]
        for row in rows:
            found = row.pop("_pcts") or [None] * len(percentiles)
            row.update({f"p{i}": v for i, v in enumerate(found)})
        return rows
    # SQLite: number the non-NULL values of each group in order (rank 0..n-1), then pick the
    # two neighbours of position h with a conditional MAX and interpolate between them.
    c = source.c
    partition = [c[k] for k in keys]
    # NULLs get their own partition so the values rank 0..n-1 among themselves; a NOT NULL
    # column skips that (measured: 40% of the query on a million calls).
    ranking = [*partition, c[value].is_(None)] if getattr(c[value], "nullable", True) else partition
    ranked = select(
        *c,
        (func.row_number().over(partition_by=ranking or None, order_by=c[value]) - 1).label(
            "_rank"
        ),
        func.count(c[value]).over(partition_by=partition or None).label("_n"),
    ).subquery()
    r = ranked.c
    v = r[value]
    n = func.max(r._n)
    pcts = []
    for i, p in enumerate(percentiles):
        row_h = literal(p, Float) * (r._n - 1)
        row_lo = cast(row_h, Integer)
        row_hi = row_lo + case((row_h > row_lo, 1), else_=0)
        lo = func.max(case((and_(v.is_not(None), r._rank == row_lo), v)))
        hi = func.max(case((and_(v.is_not(None), r._rank == row_hi), v)))
        h = literal(p, Float) * (n - 1)
        pcts.append((lo + (hi - lo) * (h - cast(h, Integer))).label(f"p{i}"))
    group = [r[k] for k in keys]
    query = select(*group, *measures(r), *pcts).group_by(*group)
    return [dict(row._mapping) for row in session.execute(query)]
