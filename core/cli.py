"""The `reelforge` / `python -m core` command: run a workflow in the terminal, manage users and
credits, upgrade the schema, check health, run a Celery worker and look after runs and workers."""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import sys
import time
from collections import Counter
from collections.abc import Sequence
from datetime import timedelta

from rich.console import Console
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from sqlalchemy.orm import Session

from core import auth, budgets, credits, health, liveness, telemetry, tokens, workflows
from core.clock import utcnow
from core.config import Settings, load_settings
from core.db import Database, upgrade_schema
from core.errors import ReelforgeError, RequestValidationError
from core.logs import configure_logging
from core.schemas import parse_request
from core.states import StepStatus, WorkflowStatus
from core.workflows import WorkflowView

console = Console()
err_console = Console(stderr=True)

STEP_ICONS = {
    StepStatus.PENDING: "[dim]○[/]",
    StepStatus.PROCESSING: "[cyan]◐[/]",
    StepStatus.COMPLETED: "[green]✔[/]",
    StepStatus.FAILED: "[red]✖[/]",
    StepStatus.CANCELLED: "[yellow]■[/]",
    StepStatus.SKIPPED: "[dim]–[/]",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reelforge", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log every step change")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run one workflow end to end, live in the terminal")
    run.add_argument("--image-prompt", required=True)
    run.add_argument("--video-prompt", required=True)
    run.add_argument("--style", choices=["vivid", "natural"], default="vivid")
    run.add_argument("--quality", choices=["standard", "hd"], default="standard")
    run.add_argument("--size", choices=["1024x1024", "1792x1024", "1024x1792"], default="1792x1024")
    run.add_argument("--duration", choices=["4s", "6s", "8s"], default="8s")
    run.add_argument("--resolution", choices=["720p", "1080p"], default="720p")
    run.add_argument("--no-audio", action="store_true", help="generate a silent clip")
    run.add_argument(
        "--reuse-still",
        action="store_true",
        help="take the still of an earlier run with the same image request instead of paying",
    )
    run.add_argument("--user", default=auth.OPERATOR_EMAIL, help="act as this account")

    commands.add_parser("health", help="check the database, storage and providers")

    load = commands.add_parser(
        "load", help="N concurrent workflows on fault-injecting offline providers, then checks"
    )
    load.add_argument("--workflows", type=int, default=200)
    load.add_argument(
        "--workers", type=int, default=2, help="Celery workers to start (EXECUTOR=celery only)"
    )

    recover = commands.add_parser(
        "recover", help="resume runs a dead process left behind, wait for them, report"
    )
    recover.add_argument(
        "--wait",
        action="store_true",
        help="also wait for the runs live runners still hold, until they end or are taken over",
    )
    recover.add_argument(
        "--stale-after",
        type=float,
        metavar="SECONDS",
        help="treat a run as abandoned after this long without a heartbeat "
        "(default: HEARTBEAT_STALE_S)",
    )

    users = commands.add_parser("users", help="manage accounts").add_subparsers(
        dest="users_command", required=True
    )
    create = users.add_parser("create", help="create an account")
    create.add_argument("email")
    create.add_argument("--admin", action="store_true")
    create.add_argument("--password", help="default: a generated one, printed once")

    users.add_parser(
        "bootstrap-admin",
        help="create the first admin (ADMIN_EMAIL / ADMIN_PASSWORD, or a generated password) "
        "when there is none",
    )

    credit = commands.add_parser("credits", help="manage credits").add_subparsers(
        dest="credits_command", required=True
    )
    grant = credit.add_parser("grant", help="grant credits to an account")
    grant.add_argument("email")
    grant.add_argument("amount", type=int)
    grant.add_argument("--reason", default="granted from the command line")

    budget = commands.add_parser(
        "budgets", help="monthly credit budgets (calendar months in UTC)"
    ).add_subparsers(dest="budgets_command", required=True)
    budget_set = budget.add_parser("set", help="set a user's, a project's or the team's budget")
    _budget_scope(budget_set)
    budget_set.add_argument("--monthly", type=int, required=True, metavar="N", help="credits")
    _budget_scope(budget.add_parser("clear", help="remove a budget"))
    budget.add_parser("list", help="every budget with what it spent this month")

    commands.add_parser(
        "api", help="serve the HTTP API (uvicorn on API_HOST:API_PORT, default 127.0.0.1:8000)"
    )

    token = commands.add_parser("tokens", help="manage API tokens").add_subparsers(
        dest="tokens_command", required=True
    )
    token_create = token.add_parser("create", help="create a token (printed once)")
    token_create.add_argument("--user", required=True, metavar="EMAIL")
    token_create.add_argument("--name", default="")
    token_create.add_argument("--expires-days", type=int, metavar="D")
    token.add_parser("list", help="list an account's tokens").add_argument(
        "--user", required=True, metavar="EMAIL"
    )
    token.add_parser("revoke", help="revoke a token").add_argument("token", metavar="PREFIX_OR_ID")

    worker = commands.add_parser(
        "worker", help="run a Celery worker: take runs from REDIS_URL until stopped"
    )
    worker.add_argument(
        "--concurrency", type=int, metavar="N", help="runs at once (default: WORKER_THREADS)"
    )

    commands.add_parser("workers", help="list the live workers and the runs in their hands")

    runs = commands.add_parser("runs", help="look after runs").add_subparsers(
        dest="runs_command", required=True
    )
    runs_list = runs.add_parser("list", help="the newest runs of every user")
    runs_list.add_argument("--status", choices=[s.value for s in WorkflowStatus])
    runs_list.add_argument("--user", metavar="EMAIL")
    runs_list.add_argument("--limit", type=int, default=50)
    runs_list.add_argument("--json", action="store_true")
    runs_show = runs.add_parser("show", help="one run: steps, worker, times, cost, refund")
    runs_show.add_argument("workflow_id")
    runs_show.add_argument("--json", action="store_true")
    runs.add_parser("cancel", help="cancel a run, wherever it runs").add_argument("workflow_id")

    db = commands.add_parser("db", help="database").add_subparsers(dest="db_command", required=True)
    db.add_parser("upgrade", help="bring the schema to the newest version")

    demo = commands.add_parser(
        "seed-demo", help="write realistic demo history (users, runs, calls, ledger) in bulk"
    )
    demo.add_argument("--workflows", type=int, default=10_000, help="runs to write")
    demo.add_argument("--days", type=int, default=365, help="spread them over this many days")
    demo.add_argument("--seed", type=int, default=0, help="random seed (and demo user domain)")
    return parser


def _budget_scope(parser: argparse.ArgumentParser) -> None:
    scope = parser.add_mutually_exclusive_group(required=True)
    scope.add_argument("--user", metavar="EMAIL")
    scope.add_argument("--project", metavar="NAME")
    scope.add_argument("--team", action="store_true", help="the whole team's budget")
    parser.add_argument(
        "--owner", metavar="EMAIL", help="the project's owner, when several share its name"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
        configure_logging(
            settings, level=logging.INFO if args.verbose else logging.WARNING, console=err_console
        )
        telemetry.setup(args.command if args.command in ("api", "worker") else "cli")
        return COMMANDS[args.command](args, settings)
    except RequestValidationError as exc:
        for field, problem in exc.problems.items():
            err_console.print(f"[red]error:[/] {field} {problem}")
        return 2
    except ReelforgeError as exc:
        err_console.print(f"[red]error:[/] {exc}")
        return 1
    except KeyboardInterrupt:
        return 130


def _database(settings: Settings) -> Database:
    upgrade_schema(settings.resolved_database_url)
    return Database.from_url(settings.resolved_database_url)


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from core.runtime import Runtime

    request = parse_request(
        {
            "imagePrompt": args.image_prompt,
            "videoPrompt": args.video_prompt,
            "imageConfig": {"style": args.style, "quality": args.quality, "size": args.size},
            "videoConfig": {
                "duration": args.duration,
                "resolution": args.resolution,
                "generateAudio": not args.no_audio,
            },
        }
    )  # at the edge: a refused request never starts the engine
    runtime = Runtime(settings)
    try:
        with runtime.db.begin() as session:
            user = _acting_user(session, args.user, settings)
        runtime.start_background()
        workflow_id, _ = runtime.start_workflow(user, request, reuse_still=args.reuse_still)
        view = _follow(runtime, workflow_id, user)
        _print_summary(runtime, view)
        return 0 if view.status is WorkflowStatus.COMPLETED else 1
    finally:
        runtime.shutdown()


def _acting_user(session: Session, email: str, settings: Settings) -> auth.UserView:
    """The account `run` acts as: the default operator is made on first use; any other email
    must already have an account (a typo must not mint a new one with starting credits)."""
    if auth.normalize_email(email) == auth.OPERATOR_EMAIL:
        return auth.ensure_user(session, email, starting_credits=settings.starting_credits)
    user = auth.find_user(session, email)
    if user is None:
        raise RequestValidationError(
            {"--user": f"{email} has no account (create it with: users create EMAIL)"}
        )
    return user


def _follow(runtime, workflow_id: str, user: auth.UserView) -> WorkflowView:
    """Redraw the steps until the run ends; Ctrl-C cancels the run (and waits for the refund)."""
    cancelled = False
    with Live(console=console, refresh_per_second=8) as live:
        while True:
            try:
                with runtime.db.read() as session:
                    view = workflows.load_workflow(session, workflow_id)
                live.update(_steps_table(view))
                if view.status.is_terminal:
                    return view
                time.sleep(0.2)
            except KeyboardInterrupt:
                if cancelled:
                    raise
                cancelled = True
                runtime.cancel(workflow_id, user)
                err_console.print("[yellow]Cancelling… (Ctrl-C again to leave at once)[/]")


def _steps_table(view: WorkflowView) -> Table:
    table = Table(title=f"Workflow {view.id} — {view.status} ({view.progress}%)", expand=True)
    for column in ("", "step", "progress", "message", "time", "worker"):
        table.add_column(column)
    for step in view.steps:
        seconds = step.duration_s
        table.add_row(
            STEP_ICONS[step.status],
            step.name.value,
            ProgressBar(
                total=100, completed=100 if step.status.is_done else step.progress, width=20
            ),
            step.error_message or step.message,
            f"{seconds:.2f} s" if seconds is not None else "",
            step.worker_id or "",
        )
    return table


def _print_summary(runtime, view: WorkflowView) -> None:
    with runtime.db.read() as session:
        assets = workflows.assets_of(session, view.id)
        refund = credits.refund_entry(session, view.id)
    console.line()
    if view.status is WorkflowStatus.COMPLETED:
        for asset in assets:
            url = runtime.providers.storage.url(asset.storage_key, expires_s=3600)
            console.print(f"[green]{asset.kind}[/]: {url.removeprefix('file://')}", soft_wrap=True)
    else:
        console.print(f"[red]{view.status}[/]: {view.error_message or ''}")
        if refund is not None:
            console.print(f"refunded {refund.amount} credits (ledger entry {refund.id})")
    total = view.duration_s or 0.0
    refunded = refund.amount if refund is not None else 0
    cost = f"cost {view.cost_credits - refunded} credits"
    if refunded:
        cost += f" ({view.cost_credits} reserved, {refunded} refunded)"
    console.print(f"total {total:.2f} s, {cost}")
    if view.trace_id:
        console.print(f"trace {view.trace_id}")


def cmd_health(args: argparse.Namespace, settings: Settings) -> int:
    report = health.check_settings(settings)
    table = Table(title="Reelforge health")
    for column in ("check", "status", "latency", "detail"):
        table.add_column(column)
    for check in report:
        status = "[green]ok[/]" if check.ok else "[red]down[/]"
        table.add_row(check.name, status, f"{check.latency_ms:.0f} ms", check.detail)
    console.print(table)
    return 0 if all(check.ok for check in report) else 1


def cmd_users(args: argparse.Namespace, settings: Settings) -> int:
    if args.users_command == "bootstrap-admin":
        return _bootstrap_admin(settings)
    password = args.password or secrets.token_urlsafe(12)
    role = auth.Role.ADMIN if args.admin else auth.Role.USER
    with _database(settings).begin() as session:
        user = auth.create_user(
            session,
            args.email,
            password=password,
            role=role,
            starting_credits=settings.starting_credits,
        )
    console.print(f"created {user.role} {user.email} with {user.balance} credits")
    if not args.password:
        console.print(f"password (shown once): [bold]{password}[/]")
    return 0


def _bootstrap_admin(settings: Settings) -> int:
    from core.accounts import admin_banner, bootstrap_admin

    created = bootstrap_admin(_database(settings), settings)
    if created is not None and created.problem:
        err_console.print(f"[red]error:[/] no admin created: {created.problem}")
        return 1
    if created is not None and created.generated_password:
        console.print(admin_banner(created), highlight=False, soft_wrap=True)
    elif created is not None:
        console.print(f"created the first admin {created.email}")
    return 0


def cmd_credits(args: argparse.Namespace, settings: Settings) -> int:
    credits.checked_amount(args.amount, "amount")  # before the database is touched
    with _database(settings).begin() as session:
        user = auth.find_user(session, args.email)
        if user is None:
            raise RequestValidationError({"email": f"no account for {args.email}"})
        balance = credits.grant(session, user.id, args.amount, actor="cli", reason=args.reason)
    console.print(f"{user.email}: {balance} credits")
    return 0


def cmd_budgets(args: argparse.Namespace, settings: Settings) -> int:
    if args.budgets_command == "set":
        credits.checked_amount(args.monthly, "--monthly")  # before the database is touched
    with _database(settings).begin() as session:
        if args.budgets_command == "list":
            _print_budgets(budgets.statuses(session))
            return 0
        scope = budgets.find_scope(
            session, user=args.user, project=args.project, owner=args.owner, team=args.team
        )
        if args.budgets_command == "set":
            status = budgets.set_budget(session, scope, args.monthly, actor="cli")
            console.print(
                f"{status.name}: {status.limit:,} credits a month; {status.spent:,} spent and "
                f"{status.left:,} left this month (resets {status.resets_at:%Y-%m-%d} 00:00 UTC)",
                highlight=False,
            )
            return 0
        name = budgets.scope_name(session, scope)
        if not budgets.clear_budget(session, scope, actor="cli"):
            console.print(f"{name} had no budget", highlight=False)
            return 1
    console.print(f"cleared the monthly budget of {name}", highlight=False)
    return 0


def _print_budgets(listed: list[budgets.BudgetStatus]) -> None:
    if not listed:
        console.print("no budgets set")
        return
    month = listed[0].period.start
    table = Table(title=f"Monthly budgets, {month:%B %Y} (calendar months in UTC)")
    for column in ("scope", "budget", "limit", "spent this month", "left", "resets"):
        table.add_column(column, justify="right" if column in ("limit", "left") else "left")
    for b in listed:
        table.add_row(
            b.scope.kind.value,
            b.name,
            f"{b.limit:,}",
            f"{b.spent:,} ({b.spent * 100 // b.limit}%)",
            f"{b.left:,}",
            f"{b.resets_at:%Y-%m-%d} 00:00 UTC",
        )
    console.print(table)


def cmd_recover(args: argparse.Namespace, settings: Settings) -> int:
    from core.runtime import Runtime

    if args.stale_after is not None:
        settings = settings.model_copy(update={"heartbeat_stale_s": args.stale_after})
    runtime = Runtime(settings)
    try:
        with console.status("recovering interrupted runs…"):
            recovered, held = runtime.recover_and_wait(wait_for_held=args.wait)
        locks = runtime.orchestrator.run_locks.enabled
    finally:
        runtime.shutdown()
    if held:
        _print_held(held, settings, death_seen_at_once=locks)
    if not recovered:
        console.print("nothing else to recover" if held else "nothing to recover")
        return 0
    table = Table(title=f"Recovered {len(recovered)} runs")
    for column in ("workflow", "ended", "refunded", "reason"):
        table.add_column(column)
    for run in recovered:
        refunded = f"{run.refunded} credits" if run.refunded else ""
        table.add_row(run.workflow_id, run.status, refunded, run.error_message or "")
    console.print(table)
    ended = Counter(run.status for run in recovered)
    console.print(
        f"resumed {len(recovered)}: {ended['completed']} completed, {ended['failed']} failed, "
        f"{ended['cancelled']} cancelled; refunded {sum(r.refunded for r in recovered)} credits"
    )
    return 0


def _print_held(
    held: list[liveness.HeldRun], settings: Settings, *, death_seen_at_once: bool
) -> None:
    """The runs live runners hold: whose they are, and when recovery would take them over."""
    table = Table(title=f"{len(held)} runs still held by a live runner")
    for column in ("workflow", "worker", "last heartbeat", "taken over"):
        table.add_column(column)
    now = utcnow()
    for run in held:
        beat = run.heartbeat_at
        ago = f"{(now - beat).total_seconds():.0f} s ago" if beat else "none"
        silent_by = beat + timedelta(seconds=settings.heartbeat_stale_s) if beat else now
        when = f"if still silent at {silent_by:%H:%M:%S} UTC"
        if death_seen_at_once:
            when = f"as soon as its process dies, or {when}"
        table.add_row(run.workflow_id, run.worker_id or "?", ago, when)
    console.print(table)
    console.print("run `recover --wait` to wait for them", style="dim")


def cmd_load(args: argparse.Namespace, settings: Settings) -> int:
    from core.tools.load import run_load

    upgrade_schema(settings.resolved_database_url)
    if not args.verbose:  # hundreds of injected faults make hundreds of retry warnings
        logging.getLogger("core").setLevel(logging.ERROR)
    with console.status(f"running {args.workflows} workflows at once…"):
        report = run_load(settings, args.workflows, workers=args.workers)
    table = Table(title=f"Load: {report.workflows} concurrent workflows, faults 20% / 2%")
    for column in ("step", "p50", "p95"):
        table.add_column(column, justify="right")
    for step, p50 in report.step_p50_s.items():
        table.add_row(step, f"{p50:.2f} s", f"{report.step_p95_s[step]:.2f} s")
    console.print(table)
    console.print(
        f"wall {report.wall_s:.1f} s against a critical path of {report.critical_path_s:.1f} s "
        f"({report.wall_s / report.critical_path_s:.2f}x) on {report.slots} slots "
        f"({settings.executor}); throughput {report.throughput_per_min:.1f} workflows/min\n"
        f"submit to claim p50 {report.claim_p50_s:.2f} s, p95 {report.claim_p95_s:.2f} s\n"
        f"outcomes {report.outcomes}; {report.retried_calls} calls retried; "
        f"{report.refunds} refunds ({report.refunded_credits} credits); "
        f"peak memory {report.peak_memory_mb:.0f} MB"
    )
    for problem in report.broken:
        err_console.print(f"[red]invariant broken:[/] {problem}")
    return 1 if report.broken else 0


def cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from core.api import create_app
    from core.runtime import Runtime

    runtime = Runtime(settings)
    try:
        runtime.start_background()
        uvicorn.run(
            create_app(runtime),
            host=settings.api_host,
            port=settings.api_port,
            # LOG_FORMAT=json: uvicorn's own lines go through the root logger's JSON handler.
            **({"log_config": None, "log_level": "info"} if settings.log_format == "json" else {}),
        )
    finally:
        runtime.shutdown()
    return 0


def cmd_tokens(args: argparse.Namespace, settings: Settings) -> int:
    with _database(settings).begin() as session:
        if args.tokens_command == "revoke":
            revoked = tokens.revoke_token(session, args.token)
            console.print(f"revoked token {revoked.id} ({revoked.prefix}…)")
            return 0
        user = auth.find_user(session, args.user)
        if user is None:
            raise RequestValidationError({"user": f"no account for {args.user}"})
        if args.tokens_command == "create":
            issued = tokens.create_token(
                session, user.id, name=args.name, expires_days=args.expires_days
            )
            console.print(f"token {issued.token.id} for {user.email} (shown once):")
            console.print(issued.secret, highlight=False, soft_wrap=True)
            return 0
        _print_tokens(user.email, tokens.list_tokens(session, user.id))
    return 0


def _print_tokens(email: str, listed: list[tokens.TokenView]) -> None:
    table = Table(title=f"API tokens of {email}")
    for column in ("id", "prefix", "name", "created", "last used", "expires", "state"):
        table.add_column(column)
    now = utcnow()
    for t in listed:
        table.add_row(
            str(t.id),
            t.prefix,
            t.name,
            f"{t.created_at:%Y-%m-%d %H:%M}",
            f"{t.last_used_at:%Y-%m-%d %H:%M}" if t.last_used_at else "never",
            f"{t.expires_at:%Y-%m-%d %H:%M}" if t.expires_at else "never",
            t.state(now),
        )
    console.print(table)


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from core.worker import run_worker

    run_worker(settings, concurrency=args.concurrency)
    return 0


def cmd_workers(args: argparse.Namespace, settings: Settings) -> int:
    seen_after = utcnow() - timedelta(seconds=settings.heartbeat_stale_s)
    with _database(settings).read() as session:
        live = liveness.live_workers(session, seen_after=seen_after)
    if not live:
        console.print("no live workers")
        return 0
    table = Table(title=f"{len(live)} live workers")
    for column in ("worker", "host", "kind", "runs in hand", "up since", "last seen"):
        table.add_column(column)
    now = utcnow()
    for w in live:
        table.add_row(
            w.id,
            w.host,
            w.kind,
            str(w.runs_in_hand),
            f"{w.started_at:%Y-%m-%d %H:%M:%S}",
            f"{(now - w.last_seen_at).total_seconds():.0f} s ago",
        )
    console.print(table)
    return 0


def cmd_runs(args: argparse.Namespace, settings: Settings) -> int:
    from core.views import history
    from core.views.run import run_detail

    operator = auth.UserView(0, "cli", "cli", auth.Role.ADMIN, 0, True)  # sees every run
    db = _database(settings)
    if args.runs_command == "cancel":
        from core.runtime import Runtime

        runtime = Runtime(settings, upgrade=False)
        try:
            view = runtime.cancel(args.workflow_id, operator)
        finally:
            runtime.shutdown()
        pending = ", cancel requested" if view.status.is_active else ""
        console.print(f"{view.id}: {view.status}{pending}")
        return 0
    with db.read() as session:
        if args.runs_command == "show":
            detail = run_detail(session, args.workflow_id, operator)
            refund = credits.refund_entry(session, args.workflow_id)
            _print_run(detail.view, detail.phase.label, refund.amount if refund else 0, args.json)
            return 0
        viewer, everyone = operator, True
        if args.user:
            found = auth.find_user(session, args.user)
            if found is None:
                raise RequestValidationError({"--user": f"no account for {args.user}"})
            viewer, everyone = found, False
        statuses = (WorkflowStatus(args.status),) if args.status else ()
        flt = history.RunFilter(statuses=statuses, everyone=everyone)
        page = history.list_runs(session, viewer, flt, limit=args.limit)
    if args.json:
        console.print_json(json.dumps([_run_row_json(r) for r in page.rows]))
        return 0
    table = Table(title=f"{len(page.rows)} of {page.total} runs, newest first")
    table.add_column("workflow", no_wrap=True)
    for column in ("user", "status", "created", "duration", "cost", "prompt"):
        table.add_column(column)
    for r in page.rows:
        seconds = r.duration_s
        table.add_row(
            r.id,
            r.owner_email,
            r.status.value,
            f"{r.created_at:%Y-%m-%d %H:%M:%S}",
            f"{seconds:.1f} s" if seconds is not None else "",
            str(r.cost_credits),
            r.image_prompt[:40],
        )
    console.print(table)
    return 0


def _run_row_json(r) -> dict[str, object]:
    return {
        "workflowId": r.id,
        "user": r.owner_email,
        "status": r.status.value,
        "createdAt": r.created_at.isoformat(),
        "startedAt": r.started_at.isoformat() if r.started_at else None,
        "finishedAt": r.finished_at.isoformat() if r.finished_at else None,
        "costCredits": r.cost_credits,
        "error": r.error_message,
    }


def _print_run(view: WorkflowView, phase: str, refunded: int, as_json: bool) -> None:
    def at(moment) -> str | None:
        return moment.isoformat() if moment else None

    if as_json:
        steps = [
            {
                "name": s.name.value,
                "status": s.status.value,
                "attempts": s.attempts,
                "worker": s.worker_id,
                "startedAt": at(s.started_at),
                "finishedAt": at(s.finished_at),
                "message": s.error_message or s.message,
            }
            for s in view.steps
        ]
        console.print_json(
            json.dumps(
                {
                    "workflowId": view.id,
                    "status": view.status.value,
                    "phase": phase,
                    "worker": view.worker_id,
                    "createdAt": at(view.created_at),
                    "startedAt": at(view.started_at),
                    "finishedAt": at(view.finished_at),
                    "costCredits": view.cost_credits,
                    "refundedCredits": refunded,
                    "recoveries": view.recoveries,
                    "traceId": view.trace_id,
                    "error": view.error_message,
                    "steps": steps,
                }
            )
        )
        return
    console.print(_steps_table(view))
    cost = f"cost {view.cost_credits - refunded} credits"
    if refunded:
        cost += f" ({view.cost_credits} reserved, {refunded} refunded)"
    console.print(
        f"{phase}; worker {view.worker_id or '-'}; created {view.created_at:%Y-%m-%d %H:%M:%S}; "
        f"{cost}; recovered {view.recoveries} times"
        + (f"; trace {view.trace_id}" if view.trace_id else "")
    )
    if view.error_message:
        console.print(f"[red]error:[/] {view.error_message}", highlight=False)


def cmd_db(args: argparse.Namespace, settings: Settings) -> int:
    upgrade_schema(settings.resolved_database_url)
    console.print("schema is up to date")
    return 0


def cmd_seed_demo(args: argparse.Namespace, settings: Settings) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from core.tools import demo

    db = _database(settings)
    try:
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as bar:
            task = bar.add_task("seeding", total=args.workflows)

            def report(phase: str, done: int, total: int) -> None:
                bar.update(task, description=phase, completed=done, total=total)

            result = demo.seed_demo(
                db, workflows=args.workflows, days=args.days, seed=args.seed, progress=report
            )
    finally:
        db.dispose()
    mix = ", ".join(f"{count:,} {status}" for status, count in sorted(result.statuses.items()))
    console.print(
        f"seeded {result.workflows:,} workflows ({mix}), {result.steps:,} steps, "
        f"{result.api_calls:,} api calls, {result.ledger_rows:,} ledger rows for "
        f"{result.users} users in {result.projects} projects in {result.seconds:.1f} s"
    )
    return 0


COMMANDS = {
    "run": cmd_run,
    "health": cmd_health,
    "recover": cmd_recover,
    "load": cmd_load,
    "users": cmd_users,
    "credits": cmd_credits,
    "budgets": cmd_budgets,
    "api": cmd_api,
    "tokens": cmd_tokens,
    "worker": cmd_worker,
    "workers": cmd_workers,
    "runs": cmd_runs,
    "db": cmd_db,
    "seed-demo": cmd_seed_demo,
}

if __name__ == "__main__":
    sys.exit(main())
