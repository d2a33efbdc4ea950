"""`make bench`: what the engine costs per run, side by side with Celery and Prefect (issue 13).

Everything runs on Postgres, in a scratch database made on BENCH_DATABASE_URL's server (else
TEST_DATABASE_URL's, else postgresql+psycopg2://postgres@127.0.0.1:5432/test) and dropped at the
end; the Celery parts need Redis (BENCH_REDIS_URL or REDIS_URL, else redis://127.0.0.1:6379/5).
The engine is driven only through its public entry points (Runtime, start_workflow, the views,
`python -m core worker`, `python -m core api`).

Providers: the offline ones, which draw the still and encode the MP4 for real (1.5-3 s of CPU a
run on 2 cores). Their time is subtracted, but under concurrency it also takes the CPU from the
engine, so every section but celery uses "instant" providers (--providers instant, the
default): the same offline providers with the still drawn and the clip encoded once per
process, every latency and every file the engine reads, probes, hashes and stores unchanged
(bench/runs.py). --providers offline turns that off.

Provider time, where runs execute in this process, is measured around every provider method
call with perf_counter (runs.ProviderClock): api_calls hold whole milliseconds per call, and
the fifteen sub-millisecond calls of an instant run would round (mostly down) to nothing there.
The Celery workers' runs, in other processes, are read from their api_calls.

Sections (`--sections`, comma-separated; all by default):
- overhead   per run, wall time (from just before start_workflow to the finished_at the engine
             stamped) minus time inside provider calls (measured here, above), median and
             p95, zero latency, 1/8/32/64 runs at once (--levels; WORKER_THREADS and
             MAX_ACTIVE_RUNS_PER_USER set to the level) on the threads executor in this process;
             completed runs per second at each level (the throughput figure; each level runs in
             rounds of that many runs started together). First, a check that api_calls hold all
             provider time: the time measured around the offline providers' calls against what
             the same runs recorded in api_calls, one run at a time.
- celery     the same with EXECUTOR=celery and 2 `python -m core worker` processes, at 1 and 8
             runs at once (--celery-levels): the workers draw and encode every run (a worker
             process runs the product's own providers); provider time from api_calls.
- critical   200 runs at once with OFFLINE_LATENCY_S=2: the batch's wall time, and each run's
             own (its start to its end), against one run's critical path, computed from what
             that latency means per call (section_critical).
- freshness  delay from a step's state change committed to (a) the watch page's read
             (core.views.run.load_run, polled every 1 s as the page does) and (b) an SSE client
             of a real `python -m core api` on a free port, p50/p95 (bench/freshness.py).
- peers      the same six steps, no-ops, as a Celery chain on Redis (solo worker, Redis results),
             that chain with one Postgres statement per step, and a Prefect 3 flow of six tasks
             (ephemeral server, default settings), interleaved round by round with the engine at
             one run at a time (instant providers, provider time subtracted). They run in
             .venv-peers (bench/peers.py, pinned in bench/peers-requirements.txt), never in .venv.
- hot        the watch query p95 at 1,000,000 step rows and the monitoring total at 100,000
             runs (bench/hot_queries.py).

Targets (issue 13; benchmark figures, never test asserts): engine overhead median at or below
the bare Celery chain's in the same run, so 60x or more below Prefect's, while persisting every
state; 200 concurrent runs with 2 s steps within 1.1x of the critical path; freshness p95 under
1.5 s with a 1 s poll; watch query p95 under 5 ms at 1,000,000 step rows; monitoring total under
0.5 s at 100,000 runs.

Prints a table, writes it with the machine's details to bench/results.md (--results), and ends
with exactly two lines:
    engine overhead: <x> ms median (celery chain <y> ms, prefect <z> ms, same run)
    overhead ratio prefect/reelforge: <r>

    make bench                                  # everything
    make bench BENCH_ARGS="--sections overhead,peers --runs 10"
    python bench/engine.py --help
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import redis
from rich.console import Console
from rich.table import Table
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from core import telemetry
from core.config import Settings
from core.db import scratch_database, upgrade_schema
from core.providers import build_providers
from core.providers.base import Providers

sys.path.insert(0, str(Path(__file__).resolve().parent))

import freshness  # noqa: E402 - the bench/ modules beside this script
import peers_client  # noqa: E402
import runs  # noqa: E402

DEFAULT_DATABASE_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/5"
SECTIONS = ("overhead", "celery", "critical", "freshness", "peers", "hot")
console = Console()


class BenchError(Exception):
    """A missing service or a failed case: one line, no traceback."""


@dataclass
class Report:
    rows: list[tuple[str, str, str]] = field(default_factory=list)
    details: dict[str, str] = field(default_factory=dict)
    engine_ms: float | None = None  # the engine's median overhead, from the peers' rounds
    celery_ms: float | None = None
    prefect_ms: float | None = None

    def add(self, what: str, case: str, figure: str) -> None:
        self.rows.append((what, case, figure))
        console.print(f"[dim]{what} | {case} | {figure}[/dim]")


@dataclass
class Context:
    args: argparse.Namespace
    base_url: str
    url: str
    redis_url: str
    workdir: Path


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def spread(values: list[float]) -> tuple[float, float]:
    """Median and p95 (linear interpolation) of `values`."""
    return float(np.median(values)), float(np.percentile(values, 95))


def overhead_figure(batch: runs.Batch) -> str:
    median, p95 = spread([s.overhead_s for s in batch.samples])
    failed = f", {batch.failed} NOT COMPLETED" if batch.failed else ""
    return (
        f"{ms(median)} median, {ms(p95)} p95; {batch.throughput:.2f} runs/s "
        f"({len(batch.samples)} runs{failed})"
    )


# --- Sections ------------------------------------------------------------------------------


def section_overhead(ctx: Context, report: Report) -> None:
    if ctx.args.calibration_runs:
        check_provider_time(ctx, report)
    kind = ctx.args.providers
    for level in ctx.args.levels:
        settings = runs.settings_for(
            ctx.url,
            ctx.workdir,
            offline_latency_s=0,
            worker_threads=level,
            max_active_runs_per_user=level,
        )
        clock = runs.ProviderClock()
        with runs.runtime(settings, runs.timed(providers_for(ctx, settings), clock)) as engine:
            user = runs.bench_user(engine.db, f"overhead-{level}@example.com")
            runs.warm_up(engine, user)
            batch = runs.run_rounds(engine, user, level, max(level, ctx.args.runs), clock)
        report.add(
            f"overhead per run, throughput (threads, {kind} providers)",
            f"{level} at once",
            overhead_figure(batch),
        )
        if level == 1 and report.engine_ms is None:  # the peers' rounds, when run, replace it
            report.engine_ms = spread([s.overhead_s for s in batch.samples])[0] * 1000


def providers_for(ctx: Context, settings: Settings) -> Providers:
    """--providers instant: the offline ones with their drawing and encoding done once (the
    engine's figures, not the encoder's); offline: the product's own."""
    if ctx.args.providers == "instant":
        return runs.instant_providers(settings)
    return build_providers(settings)


def check_provider_time(ctx: Context, report: Report) -> None:
    """Time every provider method from outside and compare with the runs' api_calls: the time
    left out of api_calls would wrongly count as engine overhead. These runs use the product's
    offline providers, drawing and encoding every run, one run at a time."""
    settings = runs.settings_for(ctx.url, ctx.workdir, offline_latency_s=0)
    clock = runs.ProviderClock()
    with runs.runtime(settings, runs.timed(build_providers(settings), clock)) as engine:
        user = runs.bench_user(engine.db, "calibration@example.com")
        runs.warm_up(engine, user)
        clock.reset()
        batch = runs.run_rounds(engine, user, 1, ctx.args.calibration_runs, clock)
        ids = [s.workflow_id for s in batch.samples]
        recorded = sum(runs.recorded_provider_seconds(engine.db, ids).values()) / len(ids)
    outside = clock.total() / len(batch.samples)
    report.add(
        "provider time check (offline providers)",
        f"{len(batch.samples)} runs, one at a time",
        f"timed around every provider call {ms(outside)}/run, in api_calls {ms(recorded)}/run: "
        f"{ms(outside - recorded)} not in api_calls",
    )
    report.add("overhead per run (threads, offline providers)", "1 at once", overhead_figure(batch))


def section_celery(ctx: Context, report: Report) -> None:
    """The workers run the product's offline providers, drawing and encoding every run (a worker
    process cannot be handed the instant ones): past a few runs at once on a small machine the
    encoder's CPU is what the figure measures, hence its own, smaller levels."""
    top = max(ctx.args.celery_levels)
    env = {
        "DATABASE_URL": ctx.url,
        "DATA_DIR": str(ctx.workdir),
        "REDIS_URL": ctx.redis_url,
        "EXECUTOR": "celery",
        "OFFLINE_LATENCY_S": "0",
        "MAX_ACTIVE_RUNS_PER_USER": str(top),
    }
    settings = runs.settings_for(
        ctx.url,
        ctx.workdir,
        offline_latency_s=0,
        executor="celery",
        redis_url=ctx.redis_url,
        max_active_runs_per_user=top,
    )
    log = ctx.workdir / "workers.log"
    with runs.celery_workers(2, max(1, top // 2), env, log), runs.runtime(settings) as engine:
        user = runs.bench_user(engine.db, "celery@example.com")
        runs.warm_up(engine, user, runs=2)  # one run for each worker
        for level in ctx.args.celery_levels:
            batch = runs.run_rounds(engine, user, level, max(level, ctx.args.celery_runs))
            report.add(
                "overhead per run, throughput (2 Celery workers, offline providers)",
                f"{level} at once",
                overhead_figure(batch),
            )


def section_critical(ctx: Context, report: Report) -> None:
    """OFFLINE_LATENCY_S=L means, per run: validate 0 (the offline moderator has no latency),
    the image call L, the video submit L, then the job is queued L and generating 3L, seen
    at the first status poll (every POLL_INTERVAL_S) after it completes; storage calls have no
    latency. So the critical path is 2L plus the wait until the first poll at or after 4L; the
    wall time of the batch is also set against one run's measured alone (those waits plus the
    run's own work)."""
    latency, count = ctx.args.latency, ctx.args.critical_runs
    settings = runs.settings_for(
        ctx.url,
        ctx.workdir,
        offline_latency_s=latency,
        worker_threads=count,
        max_active_runs_per_user=count,
    )
    poll = settings.poll_interval_s
    polls = int(np.ceil(4 * latency / poll)) if poll else 0
    waits = 2 * latency + (polls * poll if poll else 4 * latency)
    with runs.runtime(settings, providers_for(ctx, settings)) as engine:
        user = runs.bench_user(engine.db, "critical@example.com")
        runs.warm_up(engine, user, runs=1)  # draws the still and encodes the clip once
        alone = runs.run_rounds(engine, user, 1, 1).samples[0]
        batch = runs.run_rounds(engine, user, count, count)
    wall = batch.busy_s
    failed = f", {batch.failed} NOT COMPLETED" if batch.failed else ""
    report.add(
        "critical path of one run",
        f"{latency:g} s per provider call",
        f"{waits:.2f} s of provider waits (2 calls of {latency:g} s, then the job's "
        f"{4 * latency:g} s seen at poll {polls} of {poll:g} s); one run alone took "
        f"{alone.wall_s:.2f} s",
    )
    report.add(
        "wall vs critical path",
        f"{count} runs at once",
        f"{wall:.2f} s: {wall / waits:.2f}x the critical path (provider waits), "
        f"{wall / alone.wall_s:.2f}x one run alone{failed}",
    )
    # The batch's wall includes starting its runs one after another from this one thread; each
    # run's own time (its start to its end) is what the 200 runs at once cost each of them.
    median, p95 = spread([s.wall_s for s in batch.samples])
    report.add(
        "each run vs critical path",
        f"{count} runs at once",
        f"{median / waits:.2f}x median, {p95 / waits:.2f}x p95 (from its start to its end)",
    )


def section_freshness(ctx: Context, report: Report) -> None:
    result = freshness.measure(
        ctx.url,
        ctx.workdir,
        runs=ctx.args.freshness_runs,
        providers=lambda s: providers_for(ctx, s),
    )
    for name, delays in (("watch page poll (1 s)", result.watch), ("SSE client", result.sse)):
        if not delays:
            report.add("freshness", name, "NO SAMPLES")
            continue
        p50, p95 = float(np.median(delays)), float(np.percentile(delays, 95))
        report.add("freshness", name, f"{ms(p50)} p50, {ms(p95)} p95 ({len(delays)} state changes)")


def section_peers(ctx: Context, report: Report) -> None:
    with ExitStack() as stack:
        peer_db = stack.enter_context(scratch_database(ctx.base_url, prefix="reelforge_peers"))
        peers = stack.enter_context(
            peers_client.start(ctx.args.peers_python, ctx.redis_url, peer_db, ctx.workdir)
        )
        settings = runs.settings_for(ctx.url, ctx.workdir, offline_latency_s=0)
        clock = runs.ProviderClock()
        providers = runs.timed(providers_for(ctx, settings), clock)
        engine = stack.enter_context(runs.runtime(settings, providers))
        user = runs.bench_user(engine.db, "peers@example.com")
        runs.warm_up(engine, user)
        walls: dict[str, list[float]] = {"reelforge": [], **{p: [] for p in peers_client.PEERS}}
        for _ in range(ctx.args.rounds):
            batch = runs.run_rounds(engine, user, 1, ctx.args.peer_runs, clock)
            walls["reelforge"] += [s.overhead_s for s in batch.samples]
            for peer in peers_client.PEERS:
                walls[peer] += peers.run(peer, ctx.args.peer_runs)
        report.details.update(peers.versions)
    medians = {name: spread(values)[0] for name, values in walls.items()}
    for name, values in walls.items():
        median, p95 = spread(values)
        report.add(
            "peers, same run (interleaved)",
            peers_client.LABELS.get(name, "reelforge engine"),
            f"{ms(median)} median, {ms(p95)} p95; {1 / float(np.mean(values)):.1f} runs/s "
            f"one at a time, no-op steps ({len(values)} runs)",
        )
    engine_ms = medians["reelforge"]
    for peer in peers_client.PEERS:
        report.add(
            "ratio (medians)",
            f"{peers_client.LABELS[peer]} / reelforge",
            f"{medians[peer] / engine_ms:.2f}",
        )
    report.engine_ms = engine_ms * 1000
    report.celery_ms = medians["celery"] * 1000
    report.prefect_ms = medians["prefect"] * 1000


def section_hot(ctx: Context, report: Report) -> None:
    try:
        import hot_queries  # bench/hot_queries.py
    except ModuleNotFoundError as missing:
        if missing.name != "hot_queries":
            raise
        report.add("hot query", "watch page, monitoring", "not measured: no bench/hot_queries.py")
        return

    figures = hot_queries.measure(ctx.base_url)
    report.add(
        "hot query", "watch page, 1,000,000 step rows", f"{figures['watch_p95_ms']:.2f} ms p95"
    )
    report.add(
        "hot query", "monitoring total, 100,000 runs", f"{figures['monitoring_total_s']:.3f} s"
    )


RUNNERS = {
    "overhead": section_overhead,
    "celery": section_celery,
    "critical": section_critical,
    "freshness": section_freshness,
    "peers": section_peers,
    "hot": section_hot,
}


# --- Services, machine, output ------------------------------------------------------------


def database_server() -> str:
    url = os.environ.get("BENCH_DATABASE_URL") or os.environ.get("TEST_DATABASE_URL")
    if not url:
        console.print(
            f"BENCH_DATABASE_URL and TEST_DATABASE_URL not set: using {DEFAULT_DATABASE_URL}"
        )
    return url or DEFAULT_DATABASE_URL


def postgres_version(url: str) -> str:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(text("SHOW server_version")).scalar_one()
    except OperationalError:
        shown = make_url(url).render_as_string(hide_password=True)
        raise BenchError(
            f"bench: Postgres not reachable at {shown}: set BENCH_DATABASE_URL"
        ) from None
    finally:
        engine.dispose()


def redis_version(url: str) -> str:
    try:
        return redis.Redis.from_url(url, socket_timeout=5).info("server")["redis_version"]
    except redis.RedisError:
        raise BenchError(f"bench: Redis not reachable at {url}: set BENCH_REDIS_URL") from None


def machine(base_url: str, redis_url: str | None) -> dict[str, str]:
    from importlib.metadata import version

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=runs.ROOT
    ).stdout.strip()
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "arguments": " ".join(sys.argv[1:]) or "(defaults)",
        "commit": commit or "unknown",
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "load average at start": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "python": platform.python_version(),
        "postgres": postgres_version(base_url),
        "redis": redis_version(redis_url) if redis_url else "not used",
        "celery (engine)": version("celery"),
        "sqlalchemy": version("sqlalchemy"),
    }


def render(report: Report, sections: list[str], path: Path) -> None:
    table = Table(title="Reelforge engine benchmark")
    for column in ("measure", "case", "figure"):
        table.add_column(column)
    for row in report.rows:
        table.add_row(*row)
    console.print(table)
    lines = [
        "# Engine benchmark: the last run",
        "",
        f"`make bench` (sections: {', '.join(sections)}); how each figure is measured and the",
        "targets: bench/engine.py's docstring.",
        "",
        "| measure | case | figure |",
        "| --- | --- | --- |",
        *(f"| {a} | {b} | {c} |" for a, b, c in report.rows),
        "",
        *(f"    {line}" for line in last_lines(report)),
        "",
        "## Machine",
        "",
        *(f"- {key}: {value}" for key, value in report.details.items()),
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")


def last_lines(report: Report) -> list[str]:
    def figure(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.1f}"

    ratio = (
        "n/a"
        if report.prefect_ms is None or not report.engine_ms
        else f"{report.prefect_ms / report.engine_ms:.1f}"
    )
    return [
        f"engine overhead: {figure(report.engine_ms)} ms median "
        f"(celery chain {figure(report.celery_ms)} ms, prefect {figure(report.prefect_ms)} ms, "
        "same run)",
        f"overhead ratio prefect/reelforge: {ratio}",
    ]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated, any of {', '.join(SECTIONS)} (default: all)",
    )
    parser.add_argument(
        "--runs", type=int, default=32, help="runs per concurrency level (at least the level)"
    )
    parser.add_argument("--levels", default="1,8,32,64", help="concurrency levels, comma-separated")
    parser.add_argument("--celery-levels", default="1,8", help="levels for the celery section")
    parser.add_argument("--celery-runs", type=int, default=8, help="runs per celery level")
    parser.add_argument(
        "--calibration-runs",
        type=int,
        default=5,
        help="runs of the provider time check with the offline providers (0: skip it)",
    )
    parser.add_argument(
        "--providers",
        choices=("instant", "offline"),
        default="instant",
        help="for the concurrency levels, the critical path and freshness: the offline "
        "providers drawing and encoding once (instant, the default) or every run (offline)",
    )
    parser.add_argument("--critical-runs", type=int, default=200)
    parser.add_argument("--latency", type=float, default=2.0, help="OFFLINE_LATENCY_S, critical")
    parser.add_argument("--freshness-runs", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved peer rounds")
    parser.add_argument("--peer-runs", type=int, default=4, help="runs per peer per round")
    parser.add_argument(
        "--peers-python", type=Path, default=runs.ROOT / ".venv-peers" / "bin" / "python"
    )
    parser.add_argument("--results", type=Path, default=runs.ROOT / "bench" / "results.md")
    args = parser.parse_args()
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}: choose from {', '.join(SECTIONS)}")
    args.levels = [int(n) for n in args.levels.split(",")]
    args.celery_levels = [int(n) for n in args.celery_levels.split(",")]
    return args


def main() -> None:
    args = parse_args()
    # With OTEL_EXPORTER_OTLP_ENDPOINT set, the engine's runs are traced as in production
    # (issue 15 compares the overhead with tracing off and on); without it this does nothing.
    tracing = telemetry.setup("bench")
    base_url = database_server()
    redis_url = (
        os.environ.get("BENCH_REDIS_URL") or os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
    )
    report = Report()
    try:
        needs_redis = {"celery", "peers"} & set(args.sections)
        report.details.update(machine(base_url, redis_url if needs_redis else None))
        report.details["tracing"] = "on (OTLP)" if tracing else "off"
        if "peers" in args.sections and not args.peers_python.exists():
            raise BenchError(f"bench: no {args.peers_python}: `make bench` creates it")
        with (
            scratch_database(base_url, prefix="reelforge_bench") as url,
            tempfile.TemporaryDirectory(prefix="reelforge-bench-") as tmp,
        ):
            upgrade_schema(url)
            ctx = Context(args, base_url, url, redis_url, Path(tmp))
            for name in args.sections:
                started = time.monotonic()
                RUNNERS[name](ctx, report)
                took = time.monotonic() - started
                report.details[f"section {name}"] = f"{took:.0f} s"
                console.print(f"[dim]{name}: {took:.0f} s[/dim]")
    except (BenchError, peers_client.PeerError) as exc:
        console.print(str(exc), markup=False)
        raise SystemExit(1) from None
    report.details["load average at end"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    render(report, args.sections, args.results)
    for line in last_lines(report):
        print(line)


if __name__ == "__main__":
    main()
