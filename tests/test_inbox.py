"""The inbox is written with the events it reports: a run's end (with its refund), an admin's
grant, adjustment or refund; once per event even when the event's write is retried; each user
reads and marks only their own entries."""

from __future__ import annotations

from datetime import timedelta

from core import admin, inbox, workflows
from core.auth import Role
from core.clock import utcnow
from core.errors import FailureCategory
from core.schemas import parse_request
from core.states import WorkflowStatus

REQUEST = parse_request({"imagePrompt": "a red fox in snow", "videoPrompt": "dolly in"})
RUNNER = "runner-under-test"


def claimed_run(db, user) -> str:
    workflow_id = workflows.start_workflow(
        db, user_id=user.id, request=REQUEST, client_key=utcnow().isoformat(), actor=user.email
    ).workflow_id
    with db.begin() as session:
        assert workflows.claim(
            session, workflow_id, RUNNER, stale_before=utcnow() - timedelta(hours=1)
        )
    return workflow_id


def notices(db, user) -> list[inbox.Notice]:
    with db.read() as session:
        return inbox.recent(session, user.id)


def test_a_failed_run_tells_its_owner_once_with_the_refund_and_a_link(db, make_user):
    user = make_user(credits=100)
    workflow_id = claimed_run(db, user)
    with db.begin() as session:
        workflows.end_run(
            session,
            workflow_id,
            RUNNER,
            WorkflowStatus.FAILED,
            message="the video provider refused the prompt",
            category=FailureCategory.CONTENT_POLICY,
        )
    with db.begin() as session:  # the same event reported again (a retried write)
        inbox.run_ended(session, workflow_id)

    (failed,) = [n for n in notices(db, user) if n.kind == "run_failed"]
    assert failed.title == f"Your run failed; {workflows_cost(db, workflow_id)} credits refunded"
    assert failed.body == "a red fox in snow\nthe video provider refused the prompt"
    assert failed.run_id == workflow_id and not failed.is_read


def workflows_cost(db, workflow_id: str) -> int:
    with db.read() as session:
        return workflows.load_workflow(session, workflow_id).cost_credits


def test_a_completed_run_and_an_admins_refund_of_it_each_reach_the_owner(db, make_user):
    boss, user = make_user(role=Role.ADMIN), make_user(credits=100)
    workflow_id = claimed_run(db, user)
    with db.begin() as session:
        workflows.complete_run(session, workflow_id, RUNNER)
    with db.begin() as session:
        admin.refund_run(session, boss, workflow_id, reason="the clip was unusable")

    refund, completed = notices(db, user)[:2]
    assert completed.kind == "run_completed" and completed.run_id == workflow_id
    assert refund.kind == "credits" and refund.ledger_id is not None
    assert refund.body.startswith(f"the clip was unusable\nBy {boss.email}")


def test_grants_and_deductions_by_an_admin_reach_the_user(db, make_user):
    boss, user = make_user(role=Role.ADMIN), make_user(credits=0)
    with db.begin() as session:
        admin.grant_credits(session, boss, user.id, 30, reason="welcome")
        admin.deduct_credits(session, boss, user.id, 5, reason="correction")
    assert [n.title for n in notices(db, user)] == [
        "Your balance was adjusted by -5 credits",
        "You received 30 credits",
    ]


def test_each_user_marks_only_their_own_entries_read(db, make_user):
    ann, bob = make_user(credits=10), make_user(credits=10)
    (bobs,) = notices(db, bob)
    with db.begin() as session:
        assert inbox.mark_read(session, ann.id, [bobs.id]) == 0
        assert inbox.unread_count(session, bob.id) == 1
        assert inbox.mark_read(session, ann.id) == 1
        assert inbox.unread_count(session, ann.id) == 0
