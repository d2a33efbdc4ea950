"""Kill the engine's process with SIGKILL at least 30 times, aimed at every step in turn, restart
it each time, and prove that nothing is lost, repeated or charged twice."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select

from core import credits, workflows
from core.auth import find_user
from core.db import Database
from core.models import CreditTransaction, Workflow, WorkflowStep
from core.states import STEP_ORDER, StepName, StepStatus, WorkflowStatus
from tests.crash_child import MAX_TOTAL, USER

KILLS = 30
REPO = Path(__file__).resolve().parents[1]


def child(database_url: str, data_dir: Path, log: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.crash_child", database_url, str(data_dir), str(log), *extra],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def processing_steps(db: Database) -> list[str]:
    with db.read() as session:
        return list(
            session.execute(
                select(WorkflowStep.name).where(WorkflowStep.status == StepStatus.PROCESSING)
            ).scalars()
        )


def kill_when(process: subprocess.Popen, db: Database, step: StepName, timeout_s: float) -> list:
    """SIGKILL the child as soon as `step` is processing somewhere; returns what was processing."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        running = processing_steps(db)
        if step in running:
            process.send_signal(signal.SIGKILL)
            process.wait()
            return running
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return []


def cancel_one(db: Database) -> None:
    """A user cancels a run in the middle of the chaos."""
    with db.read() as session:
        running = session.execute(
            select(Workflow.id).where(Workflow.status == WorkflowStatus.RUNNING).limit(1)
        ).scalar()
        user = find_user(session, USER)
    if running and user:
        workflows.request_cancel(db, running, user)


@pytest.mark.slow
def test_thirty_sigkills_over_every_step_lose_nothing_repeat_nothing_charge_once(
    primary_database_url, tmp_path
):
    database_url = primary_database_url
    db = Database.from_url(database_url)
    log = tmp_path / "generations.log"
    log.touch()
    hit: Counter[str] = Counter()
    kills = 0
    for round_number in range(KILLS * 2):
        if kills >= KILLS and all(hit[s] for s in STEP_ORDER):
            break
        target = STEP_ORDER[round_number % len(STEP_ORDER)]
        running = kill_when(child(database_url, tmp_path, log), db, target, timeout_s=15)
        if running:
            kills += 1
            hit.update(set(running))
        if round_number in (7, 19):
            cancel_one(db)

    survivor = child(database_url, tmp_path, log, "--until-done")
    _, errors = survivor.communicate(timeout=240)
    assert survivor.returncode == 0, errors.decode()[-3000:]

    assert kills >= KILLS
    assert all(hit[step] > 0 for step in STEP_ORDER), f"steps never caught mid-run: {hit}"
    with db.read() as session:
        runs = [
            workflows.load_workflow(session, wid) for wid in session.scalars(select(Workflow.id))
        ]
        refunds = Counter(
            session.scalars(
                select(CreditTransaction.workflow_id).where(CreditTransaction.kind == "refund")
            )
        )
        assert credits.balance_mismatches(session) == []
    assert len(runs) == MAX_TOTAL
    for run in runs:
        assert run.status.is_terminal, run.id
        assert all(s.status is not StepStatus.PROCESSING for s in run.steps), run.id
        if run.status is WorkflowStatus.COMPLETED:
            assert refunds[run.id] == 0, run.id
        else:
            assert refunds[run.id] == 1, run.id
    assert_no_generation_repeated_after_its_step_completed(runs, log)
    outcome = Counter(run.status.value for run in runs)
    print(f"\ncrash test: {kills} SIGKILLs, steps hit {dict(hit)}, outcomes {dict(outcome)}")
    db.dispose()


def assert_no_generation_repeated_after_its_step_completed(runs, log: Path) -> None:
    events = [line.split(" ", 2) for line in log.read_text().splitlines()]
    for run in runs:
        scene = run.request.image_prompt
        motion = run.request.video_prompt
        image_done = run.step(StepName.GENERATE_IMAGE).finished_at
        video_done = run.step(StepName.GENERATE_VIDEO).finished_at
        for kind, at, prompt in events:
            when = float(at)
            if kind == "generate" and prompt.startswith(scene) and image_done:
                assert when <= image_done.timestamp(), f"{run.id}: image generated again"
            if kind == "submit" and prompt.startswith(motion) and video_done:
                assert when <= video_done.timestamp(), f"{run.id}: video submitted again"
