"""Rollups of closed days for the monitoring page's sums, so a year of history reads a few
thousand rows instead of every run, step, call and ledger row:
- runs: the finished runs created on a day, per user, project, model and status (outcomes, the
  cost of a delivered video);
- ledger: a day's run ledger rows, per user and the run's project (credit usage and totals);
- calls: a day's provider calls by start, per provider, operation and duration bucket (the
  provider panel's counts and list price);
- steps: a day's completed steps by start, per step, histogram bin and duration bucket (the
  step panel's counts, mean, max and histogram).
The panels read the rollup for the closed whole days of their range and the raw rows for the
rest (the range's partial first and last days and the days not closed yet), and sum the two:
the figures are the raw queries' own. Percentiles are not sums, but the bucket counts say which
bucket holds a wanted rank and where in it: the panel then reads only that bucket's rows
(core.views.monitoring), so the value is the raw rows' own too.

When a day is closed. Days are UTC days, as the panels' buckets are (the page's time zone only
formats them). A day D is closed when both hold:
- D ended at least GRACE ago. Rows are stamped with the writer's clock before their transaction
  commits, so a row of D may still be committing just after midnight.
- No run created before D ended is queued or running. A run in flight can still end (status),
  be refunded when it fails or is cancelled, release a reused still's credits, start and finish
  steps and make provider calls (a call is stamped when it starts and written when it ends):
  every change to a run's rows happens while it is in flight, and every row it writes is
  stamped at or after its creation, so it falls on D or later.
Days close in order (a day's rule holds for every earlier day), so the closed days are the ones
before one horizon.

Late changes. The demo seeder writes history on past days: it empties the rollups
(`forget_all`). One path of the product changes a closed day after the fact: an admin refunds a
completed run (core.admin.refund_run); its refund row is written today, but it changes its run's
creation day. Before reading, a panel rolls such days up again: those with refund or release
rows written since they were rolled up (less GRACE, for rows committing late). The ledger rollup
needs no such check: its rows fall on the day they are written, which is not closed yet.

Filling. On read, from a write transaction of its own (never the engine's: nothing on a run's
path writes here): the days missing in the closed part of the range are claimed in
`rollup_days` (ON CONFLICT DO NOTHING, so two pages filling at once roll each day up once) and
summed from the raw rows in the same transaction. A reader then uses the rollup only for the
days it sees in `rollup_days` (and not for a day it has just rolled up again: its snapshot may
hold the old sums), so a fill another transaction has not committed yet is read raw.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any, Literal

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    case,
    delete,
    func,
    or_,
    outerjoin,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from core.models import (
    ApiCall,
    CallDayRollup,
    CreditTransaction,
    LedgerDayRollup,
    RollupDay,
    RunDayRollup,
    StepDayRollup,
    Workflow,
    WorkflowStep,
    utcnow,
)
from core.states import StepStatus, WorkflowStatus

GRACE = timedelta(minutes=15)
DAY = timedelta(days=1)
DEFAULT_MODEL_LABEL = "(installation default)"
FINISHED = tuple(
    s.value for s in (WorkflowStatus.COMPLETED, WorkflowStatus.FAILED, WorkflowStatus.CANCELLED)
)
IN_FLIGHT = (WorkflowStatus.QUEUED.value, WorkflowStatus.RUNNING.value)
RUN_MOVES = ("reserve", "refund", "release")
_PRICED = text("api_calls.cost_usd > 0")  # a literal: SQLite matches partial indexes by text

Kind = Literal["runs", "ledger", "calls", "steps"]
# Upper edges (seconds) of the step-duration histogram; the last bin is open-ended. The step
# rollup counts steps per bin: changing the edges needs its rows (and rollup_days' "steps"
# rows) deleted, to be rolled up again.
HISTOGRAM_EDGES_S: tuple[float, ...] = (0.5, 1, 2, 5, 10, 20, 30, 60, 90, 120, 180, 300, 600)
HISTOGRAM_EDGES_MS = tuple(round(e * 1000) for e in HISTOGRAM_EDGES_S)
# Duration buckets per doubling of the duration (see duration_bucket), chosen on a year of bench
# history: finer buckets mean more rollup rows to sum, coarser ones more rows to read in the
# bucket holding a percentile. Calls pile up in few narrow latency ranges (a million status
# polls within 80-160 ms), steps spread thin over wide ones. Changing them needs the rollup's
# rows deleted, as for the histogram edges.
CALL_BUCKETS_PER_DOUBLING = 8
STEP_BUCKETS_PER_DOUBLING = 4
_LARGEST_MS = 2**31  # durations are 32-bit integers
ANALYZE_AFTER_DAYS = 7  # a fill of this many days (not the daily one) refreshes its statistics


@dataclass(frozen=True)
class Split:
    """[since, until) cut into the rolled-up whole days [rolled_from, rolled_until) and the rest,
    read raw. rolled_from == rolled_until: no rollup in the range."""

    since: datetime
    until: datetime
    rolled_from: datetime
    rolled_until: datetime

    @classmethod
    def unrolled(cls, since: datetime, until: datetime) -> Split:
        return cls(since, until, since, since)

    @property
    def rolled(self) -> bool:
        return self.rolled_from < self.rolled_until

    def raw(self, column: Any) -> ColumnElement[bool]:
        """`column` in the range but outside the rolled-up days."""
        in_range = and_(column >= self.since, column < self.until)
        if not self.rolled:
            return in_range
        return and_(in_range, or_(column < self.rolled_from, column >= self.rolled_until))

    def rollup(self, day: Any) -> ColumnElement[bool]:
        return and_(day >= self.rolled_from, day < self.rolled_until)


def _start_of_day(moment: datetime) -> datetime:
    return datetime.combine(moment.astimezone(UTC).date(), time(), UTC)


def horizon(session: Session, now: datetime | None = None) -> datetime:
    """The start of the first day that is not closed (see the module's docstring)."""
    limit = _start_of_day((now or utcnow()) - GRACE)
    oldest = session.execute(
        select(func.min(Workflow.created_at)).where(Workflow.status.in_(IN_FLIGHT))
    ).scalar()
    return limit if oldest is None else min(limit, _start_of_day(oldest))


def split(session: Session, kind: Kind, since: datetime, until: datetime) -> Split:
    """Fill the closed days of [since, until) that are not rolled up (and roll up again the
    runs' days a late refund changed), then cut the range: the rollup serves the unbroken run
    of rolled-up days from the first whole day on, the raw rows the rest."""
    first = _start_of_day(since)
    if first < since:
        first += DAY
    last = min(_start_of_day(until), horizon(session))
    if first >= last:
        return Split.unrolled(since, until)
    present = _fill(session, kind, first, last)
    end = first
    while end < last and end in present:
        end += DAY
    return Split(since, until, first, end)


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _fill(session: Session, kind: Kind, first: datetime, last: datetime) -> set[datetime]:
    """Roll up the days of [first, last) missing from the rollup, and again those a late
    change made stale; returns the days this transaction may read from the rollup: those it
    sees rolled up, less the stale ones (its snapshot may hold their old sums, on SQLite)."""
    days = {first + DAY * i for i in range((last - first) // DAY)}
    rolled = _rolled(session, kind, first, last)
    stale = _changed_since_rolled(session, first, rolled) if kind == "runs" and rolled else set()
    missing = (days - rolled.keys()) | stale
    if missing:
        writer = session.get_bind().execution_options(readonly=False)
        with Session(writer) as fill, fill.begin():
            if stale:
                _forget(fill, kind, stale)
            claimed = _claim(fill, kind, missing)
            if claimed:
                _roll_up(fill, kind, claimed)
                _analyze_after_many(fill, kind, claimed)
        rolled = _rolled(session, kind, first, last)  # what this snapshot sees of the fill
    return rolled.keys() - stale


def _rolled(session: Session, kind: Kind, first: datetime, last: datetime) -> dict:
    """{day: rolled_at} of the rolled-up days of [first, last)."""
    rows = session.execute(
        select(RollupDay.day, RollupDay.rolled_at).where(
            RollupDay.kind == kind, RollupDay.day >= first, RollupDay.day < last
        )
    )
    return {_as_utc(day): _as_utc(at) for day, at in rows}


def _changed_since_rolled(
    session: Session, first: datetime, rolled: dict[datetime, datetime]
) -> set[datetime]:
    """Rolled-up run days with refund or release rows written after (or just before) they were
    rolled up: an admin's refund of a completed run long after its day closed."""
    since = min(rolled.values()) - GRACE
    rows = session.execute(
        select(Workflow.created_at, CreditTransaction.created_at)
        .join(Workflow, Workflow.id == CreditTransaction.workflow_id)
        .where(
            CreditTransaction.kind.in_(("refund", "release")),
            CreditTransaction.created_at >= since,
            Workflow.created_at >= first,
        )
    )
    stale = set()
    for created, written in rows:
        day = _start_of_day(created)
        at = rolled.get(day)
        if at is not None and written >= at - GRACE:
            stale.add(day)
    return stale


def _forget(session: Session, kind: Kind, days: Iterable[datetime]) -> None:
    table = _TABLES[kind]
    days = list(days)
    session.execute(delete(table).where(table.day.in_(days)))
    session.execute(delete(RollupDay).where(RollupDay.kind == kind, RollupDay.day.in_(days)))


def forget_all(session: Session) -> None:
    """Empty every rollup, for a writer of past days (the demo seeder): they are rolled up
    again from the raw rows on the next reads."""
    for table in _TABLES.values():
        session.execute(delete(table))
    session.execute(delete(RollupDay))


def _claim(session: Session, kind: Kind, days: Iterable[datetime]) -> list[datetime]:
    """Insert the days' rollup_days rows; the ones this transaction inserted (the others were
    claimed by a concurrent fill, which rolls them up)."""
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    now = utcnow()
    rows = [{"kind": kind, "day": day, "rolled_at": now} for day in sorted(days)]
    claimed = session.scalars(
        insert(RollupDay).values(rows).on_conflict_do_nothing().returning(RollupDay.day)
    )
    return sorted(_as_utc(d) for d in claimed)


def _roll_up(session: Session, kind: Kind, days: list[datetime]) -> None:
    sums = {
        "runs": _run_days,
        "ledger": _ledger_days,
        "calls": _call_days,
        "steps": _step_days,
    }[kind]
    for start, end in _spans(days):
        source = sums(session, start, end)
        names = [c.name for c in source.selected_columns]
        session.execute(_TABLES[kind].__table__.insert().from_select(names, source))


def _analyze_after_many(session: Session, kind: Kind, days: list[datetime]) -> None:
    """Postgres: refresh the planner's statistics of a rollup that a fill of many days (the
    first read of a year of history) has just grown from nearly nothing. Until autovacuum's
    next pass the planner would take it for nearly empty, and sort its rows by text keys where
    hashing them is several times cheaper (measured on delivered_cost: 140 -> 86 ms at 100,000
    runs)."""
    if len(days) >= ANALYZE_AFTER_DAYS and session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"ANALYZE {_TABLES[kind].__tablename__}"))


def _spans(days: list[datetime]) -> list[tuple[datetime, datetime]]:
    """Sorted days as [start, end) runs of consecutive days."""
    spans: list[tuple[datetime, datetime]] = []
    for day in days:
        if spans and spans[-1][1] == day:
            spans[-1] = (spans[-1][0], day + DAY)
        else:
            spans.append((day, day + DAY))
    return spans


def day_of(session: Session, column: Any) -> ColumnElement[Any]:
    """The UTC day a timestamp falls on, as the rollups store it."""
    if session.get_bind().dialect.name == "postgresql":
        return func.date_trunc("day", func.timezone("UTC", column)).op("AT TIME ZONE")("UTC")
    # SQLAlchemy's own text form of a datetime, so the day compares with bound datetimes.
    return func.strftime("%Y-%m-%d 00:00:00.000000", column)


# ---------------------------------------------------------------------------------------------
# What one run and one ledger row contribute: the raw facts the panels sum, rolled up or not


def run_facts(
    session: Session, created: ColumnElement[bool], *scope: Any, bound: datetime | None = None
) -> Select:
    """One row per finished run created where `created` holds: its creation, groups, status,
    credits reserved, refunded, released and net, and the list price of its priced calls.

    What a run reserved is its cost_credits plus what a reused still gave back (release lowers
    cost_credits by its amount, in its transaction): only the few refund and release rows need
    reading, not the reserve of every run. With `bound` (no run created before it), a run's
    ledger rows and priced calls are summed for all runs at once through their time indexes
    (they come after its creation): for many runs. Without, per run through its own rows: for
    the few runs of a range's raw edges.
    """
    amount, kind = CreditTransaction.amount, CreditTransaction.kind
    if bound is None:
        moves = select(CreditTransaction.amount).where(CreditTransaction.workflow_id == Workflow.id)
        refunded = _total(moves.where(kind == "refund"))
        released = _total(moves.where(kind == "release"))
        usd = _total(select(ApiCall.cost_usd).where(ApiCall.workflow_id == Workflow.id, _PRICED))
        source: Any = Workflow
    else:
        ledger = (
            select(
                CreditTransaction.workflow_id,
                func.sum(case((kind == "refund", amount), else_=0)).label("refunded"),
                func.sum(case((kind == "release", amount), else_=0)).label("released"),
            )
            .where(kind.in_(("refund", "release")), CreditTransaction.created_at >= bound)
            .group_by(CreditTransaction.workflow_id)
            .subquery()
        )
        priced = (
            select(ApiCall.workflow_id, func.sum(ApiCall.cost_usd).label("usd"))
            .where(_PRICED, ApiCall.started_at >= bound)
            .group_by(ApiCall.workflow_id)
            .subquery()
        )
        refunded = func.coalesce(ledger.c.refunded, 0)
        released = func.coalesce(ledger.c.released, 0)
        usd = func.coalesce(priced.c.usd, 0)
        source = outerjoin(Workflow, ledger, ledger.c.workflow_id == Workflow.id).outerjoin(
            priced, priced.c.workflow_id == Workflow.id
        )
    runs = (
        select(
            Workflow.created_at,
            Workflow.status,
            func.coalesce(Workflow.video_model, DEFAULT_MODEL_LABEL).label("model"),
            Workflow.user_id,
            Workflow.project_id,
            Workflow.cost_credits,
            refunded.label("refunded"),
            released.label("released"),
            usd.label("usd"),
        )
        .select_from(source)
        .where(created, *scope, Workflow.status.in_(FINISHED))
        .subquery()
    )
    c = runs.c
    return select(
        c.created_at,
        c.status,
        c.model,
        c.user_id,
        c.project_id,
        (c.cost_credits + c.released).label("reserved"),
        c.refunded,
        c.released,
        (c.cost_credits - c.refunded).label("net"),
        c.usd,
    )


def _total(values: Select) -> ColumnElement[Any]:
    """The sum of a correlated subquery's one column, 0 when it has no rows."""
    column = values.selected_columns[0]
    return func.coalesce(values.with_only_columns(func.sum(column)).scalar_subquery(), 0)


def _run_days(session: Session, start: datetime, end: datetime) -> Select:
    created = and_(Workflow.created_at >= start, Workflow.created_at < end)
    facts = run_facts(session, created, bound=start).subquery()
    day = day_of(session, facts.c.created_at)
    groups = [facts.c.user_id, facts.c.project_id, facts.c.model, facts.c.status]
    return select(
        day.label("day"),
        *groups,
        func.count().label("runs"),
        func.sum(facts.c.reserved).label("reserved"),
        func.sum(facts.c.refunded).label("refunded"),
        func.sum(facts.c.released).label("released"),
        func.sum(facts.c.net).label("net"),
        func.sum(facts.c.usd).label("usd"),
    ).group_by(day, *groups)


def ledger_moves(session: Session, written: ColumnElement[bool], *scope: Any) -> Select:
    """One row per run ledger row written where `written` holds: when, whose, the run's
    project, and its credits as reserved, refunded and released."""
    amount, kind = CreditTransaction.amount, CreditTransaction.kind
    return (
        select(
            CreditTransaction.created_at,
            CreditTransaction.user_id,
            CreditTransaction.workflow_id.is_not(None).label("workflow_id_set"),
            Workflow.project_id,
            case((kind == "reserve", -amount), else_=0).label("reserved"),
            case((kind == "refund", amount), else_=0).label("refunded"),
            case((kind == "release", amount), else_=0).label("released"),
        )
        .select_from(CreditTransaction)
        .outerjoin(Workflow, Workflow.id == CreditTransaction.workflow_id)
        .where(written, kind.in_(RUN_MOVES), *scope)
    )


def _ledger_days(session: Session, start: datetime, end: datetime) -> Select:
    moves = ledger_moves(
        session, and_(CreditTransaction.created_at >= start, CreditTransaction.created_at < end)
    ).subquery()
    day = day_of(session, moves.c.created_at)
    groups = [moves.c.user_id, moves.c.workflow_id_set, moves.c.project_id]
    return select(
        day.label("day"),
        *groups,
        func.sum(moves.c.reserved).label("reserved"),
        func.sum(moves.c.refunded).label("refunded"),
        func.sum(moves.c.released).label("released"),
    ).group_by(day, *groups)


def call_counts(calls: Any) -> list[ColumnElement[Any]]:
    """The provider panel's counts over api_calls rows (`calls`: their columns)."""
    return [
        func.count().label("calls"),
        func.count().filter(calls.attempt == 1).label("first_attempts"),
        func.count().filter(calls.attempt == 2).label("retries"),
        func.count().filter(calls.outcome != "ok").label("errors"),
        func.count().filter(calls.outcome == "transient").label("transient"),
        # Only successful generate/result calls cost anything: skip the zeros' numeric adds.
        func.sum(calls.cost_usd).filter(calls.cost_usd != 0).label("cost"),
    ]


@functools.cache  # 27 branches: building it costs more than the raw rows it buckets
def duration_bucket(ms: Any, per_doubling: int) -> ColumnElement[int]:
    """The lower edge (whole ms) of a duration's bucket: every millisecond its own bucket below
    2 * per_doubling ms, then `per_doubling` equal buckets from each power of two to the next
    (so a bucket spans at most 1/per_doubling of its durations)."""
    exact = 2 * per_doubling
    whens = [(ms < exact, ms)]
    lower = exact
    while lower < _LARGEST_MS:
        width = lower // per_doubling
        whens.append((ms < 2 * lower, ms // width * width))
        lower *= 2
    return case(*whens, else_=ms)


def call_buckets(calls: Any, where: Any) -> Select:
    """rollup.call_counts of the api_calls rows where `where` holds, per provider, operation
    and duration bucket."""
    bucket = duration_bucket(calls.duration_ms, CALL_BUCKETS_PER_DOUBLING)
    return (
        select(calls.provider, calls.operation, bucket.label("bucket_ms"), *call_counts(calls))
        .where(where)
        .group_by(calls.provider, calls.operation, bucket)
    )


def _call_days(session: Session, start: datetime, end: datetime) -> Select:
    calls = ApiCall.__table__.c
    day = day_of(session, calls.started_at)
    per_day = call_buckets(calls, and_(calls.started_at >= start, calls.started_at < end))
    return per_day.add_columns(day.label("day")).group_by(day)


def step_bin(duration_ms: Any) -> ColumnElement[int]:
    """The histogram bin of a duration: i for [edge i-1, edge i), the last open-ended."""
    edges = enumerate(HISTOGRAM_EDGES_MS)
    return case(*((duration_ms < edge, i) for i, edge in edges), else_=len(HISTOGRAM_EDGES_MS))


def step_bins(steps: Any, where: Any) -> Select:
    """Completed steps where `where` holds, per step, histogram bin and duration bucket: count,
    sum and max of duration (steps without one left out, as the raw aggregates ignore them)."""
    ms = steps.duration_ms
    bucket = duration_bucket(ms, STEP_BUCKETS_PER_DOUBLING)
    return (
        select(
            steps.name,
            step_bin(ms).label("bin"),
            bucket.label("bucket_ms"),
            func.count().label("count"),
            func.sum(ms).label("sum_ms"),
            func.max(ms).label("max_ms"),
        )
        .where(where, steps.status == StepStatus.COMPLETED.value, ms.is_not(None))
        .group_by(steps.name, step_bin(ms), bucket)
    )


def _step_days(session: Session, start: datetime, end: datetime) -> Select:
    steps = WorkflowStep.__table__.c
    day = day_of(session, steps.started_at)
    per_day = step_bins(steps, and_(steps.started_at >= start, steps.started_at < end))
    return per_day.add_columns(day.label("day")).group_by(day)


_TABLES: dict[Kind, Any] = {
    "runs": RunDayRollup,
    "ledger": LedgerDayRollup,
    "calls": CallDayRollup,
    "steps": StepDayRollup,
}
