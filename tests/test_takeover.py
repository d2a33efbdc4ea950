"""A dead runner is taken over at once, and one user's batch waits its turn.

`python -m core recover` right after a SIGKILL (Postgres: the dead process's run locks are
free, so no heartbeat has to go stale), and MAX_ACTIVE_RUNS_PER_USER held at claim time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

from sqlalchemy import select

from core import credits, workflows
from core.clock import utcnow
from core.db import Database
from core.executor import ThreadExecutor
from core.models import Workflow
from core.runtime import Runtime
from core.schemas import parse_request
from core.states import StepStatus, WorkflowStatus
from core.views.watch import busy_slots, live_phase
from tests.helpers import ENGINE_ENV, wait_for
from tests.test_crash_recovery import child, generations_repeated, processing_steps
from tests.test_workers import max_overlap

REPO = Path(__file__).resolve().parents[1]


def test_recover_right_after_a_sigkill_settles_every_run_the_dead_process_left(
    postgres_only_url, tmp_path
):
    db = Database.from_url(postgres_only_url)
    log = tmp_path / "generations.log"
    log.touch()
    process = child(postgres_only_url, tmp_path, log)
    wait_for(lambda: processing_steps(db) != [], timeout_s=120)
    process.send_signal(signal.SIGKILL)
    process.wait()
    with db.read() as session:
        left = list(
            session.scalars(select(Workflow.id).where(Workflow.status.in_(("queued", "running"))))
        )
    assert left

    env = {k: v for k, v in os.environ.items() if k not in ENGINE_ENV}
    env.update(DATABASE_URL=postgres_only_url, DATA_DIR=str(tmp_path), OFFLINE_LATENCY_S="0.2")
    # HEARTBEAT_STALE_S stays its 60 s default: only the free run locks tell the runner died.
    done = subprocess.run(
        [sys.executable, "-m", "core", "recover"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert done.returncode == 0, done.stderr
    assert "nothing to recover" not in done.stdout
    assert f"resumed {len(left)}:" in done.stdout, done.stdout
    with db.read() as session:
        runs = [workflows.load_workflow(session, wid) for wid in left]
        assert credits.balance_mismatches(session) == []
    assert all(run.status.is_terminal for run in runs)
    assert all(s.status is not StepStatus.PROCESSING for run in runs for s in run.steps)
    assert generations_repeated(runs, log) == []
    db.dispose()


def test_one_users_batch_never_holds_more_than_its_slots_and_others_are_not_starved(
    settings, make_user
):
    settings = settings.model_copy(update={"offline_latency_s": 0.05})
    runtime = Runtime(settings, upgrade=False, executor=ThreadExecutor(8))
    try:
        batch_user, other_user = make_user(credits=1000), make_user()
        request = parse_request(
            {"imagePrompt": "a fox", "videoPrompt": "pan", "videoConfig": {"duration": "4s"}}
        )
        batch = [runtime.start_workflow(batch_user, request)[0] for _ in range(10)]
        (other,) = [runtime.start_workflow(other_user, request)[0]]

        def runs(ids):
            with runtime.db.read() as session:
                return [workflows.load_workflow(session, wid) for wid in ids]

        wait_for(lambda: all(r.status.is_terminal for r in runs(batch + [other])), 300)
        done = runs(batch)
        assert Counter(r.status for r in done) == {WorkflowStatus.COMPLETED: 10}
        assert max_overlap(done) == 4  # the limit, reached and never passed
        (other_run,) = runs([other])
        assert other_run.status is WorkflowStatus.COMPLETED
        last_batch_start = max(r.started_at for r in done)
        assert other_run.started_at < last_batch_start  # it did not wait behind the batch
    finally:
        runtime.shutdown()


def test_a_claim_past_the_users_slots_is_refused_and_the_run_says_why_it_waits(db, make_user):
    user, other = make_user(credits=1000), make_user()
    request = parse_request({"imagePrompt": "a fox", "videoPrompt": "pan"})

    def start(owner) -> str:
        return workflows.start_workflow(
            db, user_id=owner.id, request=request, client_key=uuid.uuid4().hex, actor="t"
        ).workflow_id

    def claim(workflow_id: str) -> bool:
        with db.begin() as session:
            return workflows.claim(
                session, workflow_id, "runner-a", stale_before=utcnow(), max_active_per_user=4
            )

    assert all(claim(start(user)) for _ in range(4))
    fifth = start(user)
    assert not claim(fifth)
    with db.read() as session:
        view = workflows.load_workflow(session, fifth)
        busy = busy_slots(session, view, 4)
    assert view.status is WorkflowStatus.QUEUED
    assert live_phase(view, busy_slots=busy).label == "waiting: 4 of your runs are already running"
    assert claim(start(other))  # another user's run has slots of its own
