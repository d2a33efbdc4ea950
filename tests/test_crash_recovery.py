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
from tests.reliability import record

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


def cancel_one(db: Database) -> str | None:
    """A user cancels a run in the middle of the chaos; returns the run, if one was running."""
    with db.read() as session:
        running = session.execute(
            select(Workflow.id).where(Workflow.status == WorkflowStatus.RUNNING).limit(1)
        ).scalar()
        user = find_user(session, USER)
    if running and user:
        workflows.request_cancel(db, running, user)
    return running


@pytest.mark.slow
@pytest.mark.timeout(900)  # 30+ process starts: slow on a busy machine, never a timing target
def test_thirty_sigkills_over_every_step_lose_nothing_repeat_nothing_charge_once(
    primary_database_url, tmp_path
):
    database_url = primary_database_url
    db = Database.from_url(database_url)
    log = tmp_path / "generations.log"
    log.touch()
    hit: Counter[str] = Counter()  # kills by the step they were aimed at, caught processing
    cancelled_by_user: set[str] = set()
    for round_number in range(KILLS * 2):
        if hit.total() >= KILLS and all(hit[s] for s in STEP_ORDER):
            break
        target = STEP_ORDER[round_number % len(STEP_ORDER)]
        running = kill_when(child(database_url, tmp_path, log), db, target, timeout_s=15)
        if running:
            assert target in running
            hit[target] += 1
        if round_number in (7, 19) and (cancelled := cancel_one(db)):
            cancelled_by_user.add(cancelled)
    kills = hit.total()

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
    repeated = generations_repeated(runs, log)
    assert repeated == []
    # Nothing fails for being killed: a run ends cancelled only when a user asked for it (one
    # asked for in its last step may still complete), every other run completes.
    ended = {run.id: run.status for run in runs}
    cancelled = {wid for wid, status in ended.items() if status is WorkflowStatus.CANCELLED}
    assert cancelled <= cancelled_by_user
    assert cancelled_by_user, "the test never caught a run to cancel"
    assert all(ended[w] is WorkflowStatus.COMPLETED for w in ended.keys() - cancelled_by_user)
    outcome = Counter(status.value for status in ended.values())
    record(
        "crash",
        database_url,
        kills=kills,
        kills_by_step={step.value: hit[step] for step in STEP_ORDER},
        runs=len(runs),
        completed=outcome["completed"],
        cancelled=outcome["cancelled"],
        failed=outcome["failed"],
        generated_again=len(repeated),
    )
    db.dispose()


def generations_repeated(runs, log: Path) -> list[str]:
    """Images generated or videos submitted again after their step had completed."""
    events = [line.split(" ", 2) for line in log.read_text().splitlines()]
    repeated = []
    for run in runs:
        image_done = run.step(StepName.GENERATE_IMAGE).finished_at
        video_done = run.step(StepName.GENERATE_VIDEO).finished_at
        for kind, at, prompt in events:
            when = float(at)
            if kind == "generate" and prompt.startswith(run.request.image_prompt) and image_done:
                if when > image_done.timestamp():
                    repeated.append(f"{run.id}: image generated again")
            if kind == "submit" and prompt.startswith(run.request.video_prompt) and video_done:
                if when > video_done.timestamp():
                    repeated.append(f"{run.id}: video submitted again")
    return repeated
