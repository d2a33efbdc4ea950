"""The `python -m core` command, run as a user would run it."""

import os
import re
import subprocess
from pathlib import Path

from core.media import probe_video
from tests.helpers import run_core


def run_cli(
    tmp_path: Path, *args: str, database_url: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DATA_DIR": str(tmp_path / "data"),
        "OFFLINE_LATENCY_S": "0",
        "POLL_INTERVAL_S": "0.05",
        "COLUMNS": "200",
    }
    env.pop("DATABASE_URL", None)
    if database_url:
        env["DATABASE_URL"] = database_url
    return run_core(env, tmp_path, *args)


def test_run_completes_offline_and_prints_a_playable_video(tmp_path):
    done = run_cli(
        tmp_path,
        "run",
        "--image-prompt",
        "a red fox in fresh snow",
        "--video-prompt",
        "slow dolly in, snow falling",
        "--duration",
        "4s",
    )
    assert done.returncode == 0, done.stderr
    video = Path(re.search(r"video: (\S+\.mp4)", done.stdout).group(1))
    probe = probe_video(video.read_bytes())
    assert (probe.width, probe.height) == (1280, 720)
    assert abs(probe.duration_s - 4) <= 0.2
    assert "finalize" in done.stdout


def test_a_refused_run_exits_non_zero_and_shows_the_refund(tmp_path):
    done = run_cli(tmp_path, "run", "--image-prompt", "a gore scene", "--video-prompt", "slow pan")
    assert done.returncode == 1
    assert "Moderation refused the request" in done.stdout
    assert re.search(r"refunded \d+ credits", done.stdout)
    reserved = int(re.search(r"refunded (\d+) credits", done.stdout).group(1))
    assert f"cost 0 credits ({reserved} reserved, {reserved} refunded)" in done.stdout


def test_bad_input_names_the_field_and_exits_2(tmp_path):
    done = run_cli(tmp_path, "run", "--image-prompt", "   ", "--video-prompt", "slow pan")
    assert done.returncode == 2
    assert "imagePrompt must not be empty" in done.stderr


def test_users_and_credits_commands_manage_accounts(tmp_path):
    created = run_cli(tmp_path, "users", "create", "ada@example.com", "--admin")
    assert created.returncode == 0, created.stderr
    assert "created admin ada@example.com with 100 credits" in created.stdout
    assert re.search(r"password \(shown once\): \S{12,}", created.stdout)

    granted = run_cli(tmp_path, "credits", "grant", "ada@example.com", "25")
    assert granted.returncode == 0
    assert "ada@example.com: 125 credits" in granted.stdout

    unknown = run_cli(tmp_path, "credits", "grant", "nobody@example.com", "5")
    assert unknown.returncode == 2
    assert "no account for nobody@example.com" in unknown.stderr


def test_recover_resumes_what_a_dead_process_left_and_reports_it(tmp_path):
    from core.auth import create_user
    from core.db import Database, upgrade_schema
    from core.schemas import parse_request
    from core.workflows import start_workflow

    url = f"sqlite:///{tmp_path}/data/reelforge.db"
    upgrade_schema(url)
    db = Database.from_url(url)
    with db.begin() as session:
        user = create_user(session, "left@example.com", starting_credits=100)
    request = parse_request(
        {"imagePrompt": "a fox", "videoPrompt": "slow pan", "videoConfig": {"duration": "4s"}}
    )
    # Queued by a process that died before a runner picked it up.
    start_workflow(db, user_id=user.id, request=request, client_key="lost", actor="t")
    db.dispose()

    done = run_cli(tmp_path, "recover", "--stale-after", "0")
    assert done.returncode == 0, done.stderr
    assert "resumed 1: 1 completed, 0 failed, 0 cancelled; refunded 0 credits" in done.stdout
    assert run_cli(tmp_path, "recover", "--stale-after", "0").stdout.strip() == "nothing to recover"


def test_bootstrap_admin_creates_the_first_admin_once_and_shows_its_password_once(tmp_path):
    first = run_cli(tmp_path, "users", "bootstrap-admin")
    assert first.returncode == 0, first.stderr
    assert re.search(r"password: \S{12,}", first.stdout)
    again = run_cli(tmp_path, "users", "bootstrap-admin")
    assert again.returncode == 0
    assert "password" not in again.stdout


def cli_on(url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The command against the database at `url` (the test's SQLite file or Postgres)."""
    return run_cli(tmp_path, *args, database_url=url)


def test_credit_amounts_outside_the_bound_are_refused_with_exit_2_and_nothing_written(
    tmp_path, database_url, db
):
    from core import auth, credits

    assert cli_on(database_url, tmp_path, "users", "create", "bo@example.com").returncode == 0
    for amount in ("9223372036854775807", "99999999999999999999999", "-5", "0"):
        done = cli_on(database_url, tmp_path, "credits", "grant", "bo@example.com", amount)
        assert done.returncode == 2, (amount, done.stdout, done.stderr)
        assert "amount must be between 1 and 1,000,000,000" in done.stderr
        assert "Traceback" not in done.stderr
    garbage = cli_on(database_url, tmp_path, "credits", "grant", "bo@example.com", "12abc")
    assert garbage.returncode == 2
    assert "argument amount: invalid int value: '12abc'" in garbage.stderr

    # The balance itself stays within the bound: a grant that would pass it is refused whole.
    top_up = cli_on(database_url, tmp_path, "credits", "grant", "bo@example.com", "999999900")
    assert top_up.returncode == 0, top_up.stderr
    over = cli_on(database_url, tmp_path, "credits", "grant", "bo@example.com", "1")
    assert over.returncode == 2
    assert "amount would take the balance (1,000,000,000) above 1,000,000,000" in over.stderr

    with db.read() as session:
        user = auth.find_user(session, "bo@example.com")
        entries = credits.history(session, user.id)
        assert credits.balance_mismatches(session) == []
    assert type(user.balance) is int and user.balance == credits.MAX_BALANCE
    assert [e.amount for e in entries] == [999_999_900, 100]


def test_run_as_an_unknown_user_is_an_error_and_creates_no_account(tmp_path):
    done = run_cli(
        tmp_path,
        "run",
        "--user",
        "ghost@example.com",
        "--image-prompt",
        "a fox",
        "--video-prompt",
        "pan",
    )
    assert done.returncode == 2
    assert "--user ghost@example.com has no account" in done.stderr
    granted = run_cli(tmp_path, "credits", "grant", "ghost@example.com", "5")
    assert "no account for ghost@example.com" in granted.stderr
