"""The operator's commands for runs and workers: `runs list/show/cancel` and `workers`."""

from __future__ import annotations

import json

from core.auth import create_user
from core.db import Database, upgrade_schema
from core.schemas import parse_request
from core.workflows import start_workflow
from tests.test_cli import run_cli


def test_runs_list_show_and_cancel_a_queued_run_and_workers_lists_none(tmp_path):
    url = f"sqlite:///{tmp_path}/data/reelforge.db"
    upgrade_schema(url)
    db = Database.from_url(url)
    with db.begin() as session:
        user = create_user(session, "ops@example.com", starting_credits=100)
    request = parse_request({"imagePrompt": "a fox", "videoPrompt": "slow pan"})
    workflow_id = start_workflow(
        db, user_id=user.id, request=request, client_key="k", actor="t"
    ).workflow_id
    db.dispose()

    listed = run_cli(tmp_path, "runs", "list", "--status", "queued", "--json")
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)
    assert (row["workflowId"], row["user"], row["status"]) == (
        workflow_id,
        "ops@example.com",
        "queued",
    )
    unknown = run_cli(tmp_path, "runs", "list", "--user", "nobody@example.com")
    assert unknown.returncode == 2
    assert "no account for nobody@example.com" in unknown.stderr

    cancelled = run_cli(tmp_path, "runs", "cancel", workflow_id)
    assert cancelled.returncode == 0, cancelled.stderr
    assert f"{workflow_id}: cancelled" in cancelled.stdout

    shown = json.loads(run_cli(tmp_path, "runs", "show", workflow_id, "--json").stdout)
    assert shown["status"] == "cancelled"
    assert shown["refundedCredits"] == shown["costCredits"] > 0
    assert {s["status"] for s in shown["steps"]} == {"cancelled"}

    assert run_cli(tmp_path, "workers").stdout.strip() == "no live workers"
