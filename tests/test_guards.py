"""The guards that keep runners apart, tested where they live (core.workflows), on both databases:
a claim respects a fresh heartbeat, a forbidden move raises and writes nothing, a runner that lost
its claim can write nothing, and of two runners racing for one run exactly one wins."""

from __future__ import annotations

import re
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, select, update

from core import credits, run_start, workflows
from core.auth import UserView
from core.db import Database
from core.errors import FailureCategory, InvalidTransitionError
from core.models import CreditTransaction, User, Workflow, WorkflowStep, utcnow
from core.schemas import parse_request
from core.states import STEP_TRANSITIONS, StepName, StepStatus, WorkflowStatus
from tests import stepping
from tests.helpers import wait_for

REQUEST = parse_request({"imagePrompt": "a fox", "videoPrompt": "dolly in"})
STALE_S = 60
STEP = StepName.GENERATE_IMAGE


@pytest.fixture
def user(make_user) -> UserView:
    return make_user(credits=1000)


def new_run(db: Database, user: UserView, key: str = "k") -> str:
    workflow_id = workflows.start_workflow(
        db, user_id=user.id, request=REQUEST, client_key=key, actor="t"
    ).workflow_id
    return workflow_id


def claim(db: Database, workflow_id: str, runner_id: str, *, stale_after_s: float = STALE_S):
    """A claim as the orchestrator makes it: heartbeats older than `stale_after_s` are stale."""
    with db.begin() as session:
        stale_before = utcnow() - timedelta(seconds=stale_after_s)
        return workflows.claim(session, workflow_id, runner_id, stale_before=stale_before)


def run_row(db: Database, workflow_id: str) -> dict[str, Any]:
    with db.read() as session:
        row = session.execute(select(Workflow.__table__).where(Workflow.id == workflow_id)).one()
        return dict(row._mapping)


def step_rows(db: Database, workflow_id: str) -> list[dict[str, Any]]:
    with db.read() as session:
        rows = session.execute(
            select(WorkflowStep.__table__)
            .where(WorkflowStep.workflow_id == workflow_id)
            .order_by(WorkflowStep.position)
        )
        return [dict(r._mapping) for r in rows]


def ledger(db: Database, workflow_id: str) -> list[tuple[str, int]]:
    with db.read() as session:
        rows = session.execute(
            select(CreditTransaction.kind, CreditTransaction.amount)
            .where(CreditTransaction.workflow_id == workflow_id)
            .order_by(CreditTransaction.id)
        )
        return [tuple(r) for r in rows]


def force(db: Database, statement) -> None:
    """Put a row in the state a test needs (setup only; the code under test never does this)."""
    with db.begin() as session:
        session.execute(statement, execution_options={"synchronize_session": False})


# -- claims and heartbeats --------------------------------------------------------------------


def test_a_run_with_a_fresh_heartbeat_cannot_be_claimed_by_another_runner(db, user):
    workflow_id = new_run(db, user)
    assert claim(db, workflow_id, "runner-a")
    before = run_row(db, workflow_id)

    assert not claim(db, workflow_id, "runner-b")

    assert run_row(db, workflow_id) == before
    assert (before["runner_id"], before["recoveries"]) == ("runner-a", 0)


def test_a_run_whose_runner_went_stale_is_taken_over_once(db, user):
    workflow_id = new_run(db, user)
    assert claim(db, workflow_id, "runner-a")
    stale_at = utcnow() - timedelta(seconds=STALE_S + 1)
    force(db, update(Workflow).where(Workflow.id == workflow_id).values(heartbeat_at=stale_at))

    assert claim(db, workflow_id, "runner-b")

    row = run_row(db, workflow_id)
    assert (row["status"], row["runner_id"], row["recoveries"]) == ("running", "runner-b", 1)
    assert row["heartbeat_at"] > stale_at
    assert not claim(db, workflow_id, "runner-a")  # b's heartbeat is fresh now


def test_a_released_run_is_claimable_at_once_and_keeps_its_first_start(db, user):
    workflow_id, kept = new_run(db, user), new_run(db, user, "kept")
    assert claim(db, workflow_id, "runner-a") and claim(db, kept, "runner-a")
    started_at = run_row(db, workflow_id)["started_at"]
    assert started_at is not None
    with db.begin() as session:
        workflows.release(session, workflow_id, "runner-a")
    released = run_row(db, workflow_id)
    assert (released["status"], released["runner_id"], released["heartbeat_at"]) == (
        "running",
        None,
        None,
    )
    assert run_row(db, kept)["runner_id"] == "runner-a"  # only the named run is given back

    assert claim(db, workflow_id, "runner-b")
    row = run_row(db, workflow_id)
    assert (row["runner_id"], row["started_at"]) == ("runner-b", started_at)


def test_heartbeats_move_only_the_named_runs_of_the_beating_runner(db, user):
    mine, also_mine, theirs = new_run(db, user, "a"), new_run(db, user, "b"), new_run(db, user, "c")
    assert claim(db, mine, "runner-a") and claim(db, also_mine, "runner-a")
    assert claim(db, theirs, "runner-b")
    old = utcnow() - timedelta(seconds=STALE_S + 1)
    force(db, update(Workflow).values(heartbeat_at=old))

    with db.begin() as session:
        workflows.heartbeat(session, [mine, theirs], "runner-a")

    assert run_row(db, mine)["heartbeat_at"] > old
    assert run_row(db, also_mine)["heartbeat_at"] == old  # finished with it, or not yet
    assert run_row(db, theirs)["heartbeat_at"] == old


def test_a_heartbeat_exactly_at_the_stale_limit_is_still_fresh(db, user):
    workflow_id = new_run(db, user)
    assert claim(db, workflow_id, "runner-a")
    limit = utcnow() - timedelta(seconds=STALE_S)
    force(db, update(Workflow).where(Workflow.id == workflow_id).values(heartbeat_at=limit))
    with db.begin() as session:
        assert not workflows.claim(session, workflow_id, "runner-b", stale_before=limit)


@pytest.mark.parametrize("ended", ["completed", "failed", "cancelled"])
def test_a_finished_run_is_never_claimed_even_with_no_heartbeat(db, user, ended):
    workflow_id = new_run(db, user)
    force(
        db,
        update(Workflow)
        .where(Workflow.id == workflow_id)
        .values(status=ended, runner_id=None, heartbeat_at=None),
    )
    before = run_row(db, workflow_id)

    assert not claim(db, workflow_id, "runner-a", stale_after_s=-STALE_S)

    assert run_row(db, workflow_id) == before


def test_stale_runs_lists_only_runs_nobody_looks_after(db, user):
    fresh, stale, released, done = (new_run(db, user, k) for k in "abcd")
    for workflow_id in (fresh, stale, released, done):
        assert claim(db, workflow_id, "runner-a")
    old = utcnow() - timedelta(seconds=STALE_S + 1)
    force(db, update(Workflow).where(Workflow.id == stale).values(heartbeat_at=old))
    force(db, update(Workflow).where(Workflow.id == released).values(heartbeat_at=None))
    force(db, update(Workflow).where(Workflow.id == done).values(status="completed"))
    queued_long_ago = new_run(db, user, "e")
    force(db, update(Workflow).where(Workflow.id == queued_long_ago).values(created_at=old))
    new_run(db, user, "f")  # queued just now: its process is probably about to run it

    with db.read() as session:
        found = workflows.stale_runs(session, stale_before=utcnow() - timedelta(seconds=STALE_S))

    assert set(found) == {stale, released, queued_long_ago}


# -- two runners racing -----------------------------------------------------------------------


def race(db: Database, workflow_id: str, runners: int) -> list[bool]:
    """`runners` threads claim one run at the same moment, each in its own transaction."""
    gate = threading.Barrier(runners)

    def attempt(i: int) -> bool:
        gate.wait()
        return claim(db, workflow_id, f"runner-{i}")

    with ThreadPoolExecutor(max_workers=runners) as pool:
        return list(pool.map(attempt, range(runners)))


def test_runners_racing_for_a_queued_run_exactly_one_wins(db, user):
    for i in range(10):
        workflow_id = new_run(db, user, f"k{i}")
        outcomes = race(db, workflow_id, runners=2)
        assert outcomes.count(True) == 1, outcomes
        assert run_row(db, workflow_id)["recoveries"] == 0


def test_runners_racing_for_a_stale_run_exactly_one_takes_it_over(db, user):
    for i in range(10):
        workflow_id = new_run(db, user, f"k{i}")
        assert claim(db, workflow_id, "dead-runner")
        old = utcnow() - timedelta(seconds=STALE_S + 1)
        force(db, update(Workflow).where(Workflow.id == workflow_id).values(heartbeat_at=old))
        outcomes = race(db, workflow_id, runners=3)
        assert outcomes.count(True) == 1, outcomes
        row = run_row(db, workflow_id)
        assert row["runner_id"] == f"runner-{outcomes.index(True)}"
        assert row["recoveries"] == 1


# -- the step transition table ----------------------------------------------------------------

ALL_MOVES = [(source, target) for source in StepStatus for target in StepStatus]


def set_step(db: Database, workflow_id: str, status: StepStatus) -> None:
    force(
        db,
        update(WorkflowStep)
        .where(WorkflowStep.workflow_id == workflow_id, WorkflowStep.name == STEP.value)
        .values(status=status.value, message="before", progress=7),
    )


def test_every_step_move_the_table_forbids_raises_and_writes_nothing(db, user):
    workflow_id = new_run(db, user)
    assert claim(db, workflow_id, "runner-a")
    allowed = refused = 0
    for source, target in ALL_MOVES:
        set_step(db, workflow_id, source)
        before = step_rows(db, workflow_id)
        legal = target in STEP_TRANSITIONS[source]
        try:
            with db.begin() as session:
                stepping.write_step(
                    session, workflow_id, STEP, target, "runner-a", message="after", progress=50
                )
        except InvalidTransitionError:
            assert not legal, f"{source} -> {target} is allowed but was refused"
            assert step_rows(db, workflow_id) == before, f"{source} -> {target} wrote"
            refused += 1
        else:
            assert legal, f"{source} -> {target} is forbidden but went through"
            step = step_rows(db, workflow_id)[STEP_POSITION]
            assert (step["status"], step["message"], step["progress"]) == (target, "after", 50)
            allowed += 1
    assert (allowed, refused) == (8, 28)


STEP_POSITION = list(StepName).index(STEP)


def test_a_step_write_touches_only_its_own_run(db, user):
    mine, other = new_run(db, user), new_run(db, user, "other")
    assert claim(db, mine, "runner-a") and claim(db, other, "runner-a")
    untouched = step_rows(db, other)
    with db.begin() as session:
        stepping.start_step(session, mine, STEP, "runner-a", deadline_at=utcnow())
    assert step_rows(db, mine)[STEP_POSITION]["status"] == "processing"
    assert step_rows(db, other) == untouched


def test_a_step_cannot_complete_twice_so_a_resumed_run_never_overwrites_an_output(db, user):
    workflow_id = new_run(db, user)
    assert claim(db, workflow_id, "runner-a")
    with db.begin() as session:
        stepping.start_step(session, workflow_id, STEP, "runner-a", deadline_at=utcnow())
        stepping.complete_step(session, workflow_id, STEP, "runner-a", {"key": "first.png"})

    refusal = re.escape(f"workflow {workflow_id} (generate_image -> completed)")
    with pytest.raises(InvalidTransitionError, match=refusal), db.begin() as session:
        stepping.complete_step(session, workflow_id, STEP, "runner-a", {"key": "second.png"})

    assert step_rows(db, workflow_id)[STEP_POSITION]["output"] == {"key": "first.png"}


# -- the run's own moves ----------------------------------------------------------------------


@pytest.mark.parametrize("ended", ["completed", "failed", "cancelled"])
def test_a_finished_run_cannot_be_ended_again_nor_refunded_again(db, user, ended):
    workflow_id = new_run(db, user)
    assert claim(db, workflow_id, "runner-a")
    force(db, update(Workflow).where(Workflow.id == workflow_id).values(status=ended))
    before = (run_row(db, workflow_id), step_rows(db, workflow_id), ledger(db, workflow_id))

    for target in (WorkflowStatus.COMPLETED, WorkflowStatus.FAILED, WorkflowStatus.CANCELLED):
        with pytest.raises(InvalidTransitionError), db.begin() as session:
            workflows.end_run(
                session, workflow_id, None, target, message="again", category=FailureCategory.STALE
            )
    with pytest.raises(InvalidTransitionError), db.begin() as session:
        workflows.complete_run(session, workflow_id, "runner-a")

    assert (run_row(db, workflow_id), step_rows(db, workflow_id), ledger(db, workflow_id)) == before


ENDS = {
    "completed": (lambda s, w: workflows.complete_run(s, w, "runner-a"), None, None, None),
    "failed": (
        lambda s, w: workflows.end_run(
            s,
            w,
            "runner-a",
            WorkflowStatus.FAILED,
            message="boom",
            category=FailureCategory.STORAGE,
        ),
        "boom",
        "storage",
        "boom",
    ),
    "cancelled": (
        lambda s, w: workflows.end_run(
            s, w, "runner-a", WorkflowStatus.CANCELLED, message="stopped", category=None
        ),
        "stopped",
        None,
        "cancelled by the user",
    ),
}


@pytest.mark.parametrize("ended", ENDS)
def test_a_run_ends_with_its_reason_gives_up_its_runner_and_leaves_other_runs_alone(
    db, user, ended
):
    end, message, category, refund_reason = ENDS[ended]
    workflow_id, bystander = new_run(db, user), new_run(db, user, "bystander")
    assert claim(db, workflow_id, "runner-a") and claim(db, bystander, "runner-a")
    with db.begin() as session:
        stepping.start_step(session, workflow_id, STEP, "runner-a", deadline_at=utcnow())
    untouched = (run_row(db, bystander), step_rows(db, bystander))

    with db.begin() as session:
        end(session, workflow_id)

    row = run_row(db, workflow_id)
    assert (row["status"], row["runner_id"], row["heartbeat_at"]) == (ended, None, None)
    assert (row["error_message"], row["error_category"]) == (message, category)
    assert row["finished_at"] is not None
    assert (run_row(db, bystander), step_rows(db, bystander)) == untouched
    if ended != "completed":
        steps = {r["name"]: r for r in step_rows(db, workflow_id)}
        assert steps[STEP]["status"] == ("failed" if ended == "failed" else "cancelled")
        assert (steps[STEP]["error_message"], steps[STEP]["error_category"]) == (message, category)
        assert steps["finalize"]["status"] == "skipped"
        with db.read() as session:
            refund = credits.refund_entry(session, workflow_id)
        assert (refund.amount, refund.reason) == (
            run_row(db, workflow_id)["cost_credits"],
            refund_reason,
        )


def test_a_queued_run_cannot_complete_without_being_run(db, user):
    workflow_id = new_run(db, user)
    force(db, update(Workflow).where(Workflow.id == workflow_id).values(runner_id="runner-a"))
    refusal = f"workflow {workflow_id}: cannot become completed"
    with pytest.raises(InvalidTransitionError, match=refusal), db.begin() as session:
        workflows.complete_run(session, workflow_id, "runner-a")
    assert run_row(db, workflow_id)["status"] == "queued"


# -- fencing: a runner that lost its claim ----------------------------------------------------


def taken_over(db: Database, user: UserView) -> str:
    """A run runner-a started a step of, then lost to runner-b after going stale, while it still
    holds another run."""
    workflow_id, still_mine = new_run(db, user), new_run(db, user, "still-mine")
    assert claim(db, workflow_id, "runner-a")
    with db.begin() as session:
        stepping.start_step(session, workflow_id, STEP, "runner-a", deadline_at=utcnow())
    assert claim(db, workflow_id, "runner-b", stale_after_s=-1)
    assert claim(db, still_mine, "runner-a")  # holding another run must not let a write through
    return workflow_id


LOSER_WRITES = {
    "start_step": lambda s, w: stepping.start_step(s, w, STEP, "runner-a", deadline_at=utcnow()),
    "complete_step": lambda s, w: stepping.complete_step(s, w, STEP, "runner-a", {"k": "v"}),
    "progress": lambda s, w: stepping.write_step(
        s, w, STEP, StepStatus.PROCESSING, "runner-a", progress=90
    ),
    "complete_run": lambda s, w: workflows.complete_run(s, w, "runner-a"),
    "end_run": lambda s, w: workflows.end_run(
        s, w, "runner-a", WorkflowStatus.FAILED, message="x", category=FailureCategory.STALE
    ),
}


@pytest.mark.parametrize("write", LOSER_WRITES)
def test_a_runner_that_lost_its_claim_is_refused_every_write(db, user, write):
    workflow_id = taken_over(db, user)
    before = (run_row(db, workflow_id), step_rows(db, workflow_id), ledger(db, workflow_id))

    with pytest.raises(InvalidTransitionError), db.begin() as session:
        LOSER_WRITES[write](session, workflow_id)

    assert (run_row(db, workflow_id), step_rows(db, workflow_id), ledger(db, workflow_id)) == before


def test_a_runner_that_lost_its_claim_can_neither_beat_nor_release(db, user):
    workflow_id = taken_over(db, user)
    before = run_row(db, workflow_id)
    with db.begin() as session:
        workflows.heartbeat(session, [workflow_id], "runner-a")
        workflows.release(session, workflow_id, "runner-a")
    assert run_row(db, workflow_id) == before


def test_the_new_owner_carries_on_where_the_loser_stopped(db, user):
    workflow_id = taken_over(db, user)
    with db.begin() as session:
        stepping.start_step(session, workflow_id, STEP, "runner-b", deadline_at=utcnow())
        stepping.complete_step(session, workflow_id, STEP, "runner-b", {"k": "v"})
    step = step_rows(db, workflow_id)[STEP_POSITION]
    assert (step["status"], step["attempts"]) == ("completed", 2)


# -- the ledger's single conditional UPDATE ---------------------------------------------------


def test_a_grant_waits_for_a_concurrent_grant_instead_of_overwriting_it(db, user):
    """Two grants interleaved at the worst moment: the first has changed the balance but not
    committed when the second starts. A read-then-write balance update loses one on Postgres
    (the second reads the old committed balance). On SQLite every write transaction takes the
    write lock at BEGIN (IMMEDIATE, see core.db), so the second waits at its start; there the
    statement test below is what catches a read-then-write."""
    first_applied, second_done = threading.Event(), threading.Event()

    def second_grant() -> None:
        with db.begin() as session:
            credits.grant(session, user.id, 5, actor="t", reason="second")
        second_done.set()

    with db.begin() as session:
        credits.grant(session, user.id, 5, actor="t", reason="first")
        first_applied.set()
        second = threading.Thread(target=second_grant)
        second.start()
        wait_until_blocked(db)
        assert not second_done.is_set()
    second.join(timeout=30)

    with db.read() as session:
        assert session.get(User, user.id).balance == 1010
        assert credits.balance_mismatches(session) == []


def wait_until_blocked(db: Database) -> None:
    """Until another transaction waits on a lock (Postgres); SQLite's waiter is inside BEGIN,
    invisible from here, and serial whatever the timing."""
    if db.dialect != "postgresql":
        return

    def waiting() -> bool:
        with db.engine.connect() as connection:
            return bool(
                connection.exec_driver_sql(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE wait_event_type = 'Lock' AND datname = current_database()"
                ).scalar()
            )

    wait_for(waiting)


def in_transaction(move):
    def run(db: Database, user_id: int, workflow_id: str) -> None:
        with db.begin() as session:
            move(session, user_id, workflow_id)

    return run


def _prepared_sql(statement: str) -> str:
    """A statement as the server runs it: an EXECUTE of the runner's prepared starts is its SQL."""
    if statement.startswith("EXECUTE reelforge_start("):
        return " ".join(run_start.START.sql.split())
    return statement


LEDGER_MOVES = {
    "grant": in_transaction(lambda s, u, w: credits.grant(s, u, 5, actor="t", reason="r")),
    "adjust": in_transaction(lambda s, u, w: credits.adjust(s, u, -5, actor="t", reason="r")),
    "refund": in_transaction(lambda s, u, w: credits.refund(s, w, reason="r")),
    "reserve": lambda db, u, w: workflows.start_workflow(
        db, user_id=u, request=REQUEST, client_key="another", actor="t"
    ),
}


@pytest.mark.parametrize("move", LEDGER_MOVES)
def test_the_balance_changes_by_one_relative_update_never_read_then_write(db, user, move):
    """Why a statement test: on SQLite, write transactions are serial, so no outcome can tell a
    read-then-write from the conditional UPDATE; on Postgres (and on several machines) only the
    latter is safe. Whatever the database, the balance is never read before it is changed."""
    workflow_id = new_run(db, user)
    statements: list[str] = []

    def record(_conn, _cursor, statement, *_args) -> None:
        statements.append(" ".join(statement.split()))

    engines = (db.engine, db.statements.engine)  # sessions, and one-statement starts
    for engine in engines:
        event.listen(engine, "before_cursor_execute", record)
    try:
        LEDGER_MOVES[move](db, user.id, workflow_id)
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", record)

    # A PREPARE only defines a statement; its EXECUTE runs it.
    statements = [_prepared_sql(s) for s in statements if not s.startswith("PREPARE ")]
    touching = [s for s in statements if re.search(r"\bbalance\b", s) and "users" in s]
    assert len(touching) == 1, touching
    if touching[0].startswith("WITH"):  # a start in one statement (core.run_start)
        update = re.findall(r"UPDATE users SET balance = [^)]*", touching[0])
        assert len(update) == 1, touching[0]
        assert re.match(r"UPDATE users SET balance = balance - \$(\d+) WHERE id = ", update[0])
        assert re.search(r"AND balance >= \$\d+", update[0]), update[0]
        assert "SELECT balance" not in touching[0]
    else:
        assert touching[0].startswith("UPDATE users SET balance=(users.balance + "), touching[0]
        where = touching[0].split(" WHERE ")[1]
        assert where.startswith("users.id = ") and "users.balance + " in where
    with db.read() as session:
        assert credits.balance_mismatches(session) == []
