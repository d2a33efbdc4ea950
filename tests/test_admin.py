"""The credit-admin engine: only an active admin gets in, every credit move is a ledger row in
the admin's name, the ledger invariant survives every operation, cost edits are validated and
audited, and there is always an active admin left."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from sqlalchemy import select, update

from core import admin, credits
from core.auth import Role, UserView
from core.errors import NotFoundError, PermissionDeniedError, RequestValidationError
from core.models import AuditEvent, Setting, User, Workflow
from core.schemas import parse_request
from core.states import WorkflowStatus
from core.workflows import end_run, start_workflow

REQUEST = parse_request({"imagePrompt": "a fox", "videoPrompt": "dolly in"})


def assert_invariant(db) -> None:
    with db.read() as session:
        assert credits.balance_mismatches(session) == []


@pytest.fixture
def boss(make_user) -> UserView:
    return make_user("boss@example.com", credits=0, role=Role.ADMIN)


@pytest.fixture
def alice(make_user) -> UserView:
    return make_user("alice@example.com", credits=100)


def as_admin(db, fn, *args, **kwargs):
    with db.begin() as session:
        result = fn(session, *args, **kwargs)
    assert_invariant(db)
    return result


def costs_with(path: str, value) -> dict:
    raw = credits.DEFAULT_CREDIT_COSTS.model_dump()
    *parents, leaf = path.split(".")
    node = raw
    for key in parents:
        node = node[key]
    node[leaf] = value
    return raw


# -- who may ------------------------------------------------------------------------------------

EVERY_ADMIN_CALL = {
    "list_users": lambda s, a, u: admin.list_users(s, a),
    "grant_credits": lambda s, a, u: admin.grant_credits(s, a, u.id, 5, reason="r"),
    "deduct_credits": lambda s, a, u: admin.deduct_credits(s, a, u.id, 5, reason="r"),
    "ledger_history": lambda s, a, u: admin.ledger_history(s, a, u.id),
    "refunds": lambda s, a, u: admin.refunds(s, a),
    "refund_run": lambda s, a, u: admin.refund_run(s, a, "nope", reason="r"),
    "credit_costs": lambda s, a, u: admin.credit_costs(s, a),
    "update_credit_costs": lambda s, a, u: admin.update_credit_costs(
        s, a, credits.DEFAULT_CREDIT_COSTS.model_dump()
    ),
    "audit_log": lambda s, a, u: admin.audit_log(s, a),
    "create_user": lambda s, a, u: admin.create_user(s, a, "new@example.com"),
    "set_active": lambda s, a, u: admin.set_active(s, a, u.id, False),
    "set_role": lambda s, a, u: admin.set_role(s, a, u.id, Role.ADMIN),
}


@pytest.mark.parametrize("call", EVERY_ADMIN_CALL.values(), ids=EVERY_ADMIN_CALL.keys())
def test_a_non_admin_is_refused_every_admin_function(db, boss, alice, call):
    with pytest.raises(PermissionDeniedError), db.begin() as session:
        call(session, alice, alice)
    with db.read() as session:
        assert session.get(User, alice.id).balance == 100
        assert session.execute(select(AuditEvent)).first() is None


def test_a_stale_admin_view_is_not_trusted(db, boss, alice, make_user):
    """The view says admin, the database says otherwise: refused."""
    other = make_user("other@example.com", credits=0, role=Role.ADMIN)
    as_admin(db, admin.set_role, other, boss.id, Role.USER)
    with pytest.raises(PermissionDeniedError), db.begin() as session:
        admin.grant_credits(session, boss, alice.id, 5, reason="still an admin?")
    as_admin(db, admin.set_role, other, boss.id, Role.ADMIN)
    as_admin(db, admin.set_active, other, boss.id, False)
    with pytest.raises(PermissionDeniedError), db.begin() as session:
        admin.list_users(session, boss)


# -- credit moves -------------------------------------------------------------------------------


def test_grant_and_deduct_are_ledger_rows_in_the_admins_name(db, boss, alice):
    assert as_admin(db, admin.grant_credits, boss, alice.id, 50, reason="campaign") == 150
    assert as_admin(db, admin.deduct_credits, boss, alice.id, 30, reason="double grant") == 120
    with db.read() as session:
        page = admin.ledger_history(session, boss, alice.id)
    assert [(e.kind, e.amount, e.balance_after, e.actor, e.reason) for e in page.entries] == [
        ("adjust", -30, 120, "boss@example.com", "double grant"),
        ("grant", 50, 150, "boss@example.com", "campaign"),
        ("grant", 100, 100, "system", "starting credits"),
    ]


@pytest.mark.parametrize("reason", ["", "   "])
def test_a_credit_move_needs_a_reason(db, boss, alice, reason):
    for move in (admin.grant_credits, admin.deduct_credits):
        with pytest.raises(RequestValidationError) as refused, db.begin() as session:
            move(session, boss, alice.id, 5, reason=reason)
        assert "reason" in refused.value.problems
    assert_invariant(db)


@pytest.mark.parametrize("amount", [0, -5, 2.5, True, "10"])
def test_a_credit_move_needs_a_positive_whole_amount(db, boss, alice, amount):
    with pytest.raises(RequestValidationError) as refused, db.begin() as session:
        admin.grant_credits(session, boss, alice.id, amount, reason="r")
    assert "amount" in refused.value.problems


def test_a_deduction_never_takes_a_balance_below_zero(db, boss, alice):
    with pytest.raises(RequestValidationError) as refused, db.begin() as session:
        admin.deduct_credits(session, boss, alice.id, 101, reason="too much")
    assert refused.value.problems == {"amount": "cannot deduct 101: the balance is 100"}
    assert as_admin(db, admin.deduct_credits, boss, alice.id, 100, reason="all of it") == 0


def test_moves_for_an_unknown_user_are_refused(db, boss):
    with pytest.raises(NotFoundError), db.begin() as session:
        admin.grant_credits(session, boss, 999, 5, reason="r")


def test_users_list_flags_low_balances(db, boss, alice, make_user):
    make_user("rich@example.com", credits=1000)
    with db.read() as session:
        threshold = admin.low_balance_threshold(session)
        rows = {r.email: r for r in admin.list_users(session, boss)}
        custom = {r.email: r for r in admin.list_users(session, boss, low_balance_below=101)}
    assert threshold == credits.cost_of(REQUEST, credits.DEFAULT_CREDIT_COSTS) == 19
    assert [e for e, r in rows.items() if r.low_balance] == ["boss@example.com"]
    assert custom["alice@example.com"].low_balance and not custom["rich@example.com"].low_balance
    assert rows["boss@example.com"].role is Role.ADMIN


def test_ledger_history_pages_newest_first(db, boss, alice):
    for i in range(7):
        as_admin(db, admin.grant_credits, boss, alice.id, i + 1, reason=f"g{i}")
    with db.read() as session:
        first = admin.ledger_history(session, boss, alice.id, page=1, page_size=3)
        last = admin.ledger_history(session, boss, alice.id, page=3, page_size=3)
    assert (first.total, first.pages) == (8, 3)
    assert [e.reason for e in first.entries] == ["g6", "g5", "g4"]
    assert [e.reason for e in last.entries] == ["g0", "starting credits"]


# -- refunds ------------------------------------------------------------------------------------


def finished_run(db, user: UserView, status: WorkflowStatus, key: str) -> str:
    workflow_id = start_workflow(
        db, user_id=user.id, request=REQUEST, client_key=key, actor=user.email
    ).workflow_id
    with db.begin() as session:
        if status is WorkflowStatus.COMPLETED:
            session.execute(
                update(Workflow).where(Workflow.id == workflow_id).values(status=status.value)
            )
        else:
            end_run(session, workflow_id, None, status, message="boom", category=None)
    return workflow_id


def test_refunds_list_automatic_and_admin_refunds(db, boss, alice):
    failed = finished_run(db, alice, WorkflowStatus.FAILED, "f")
    done = finished_run(db, alice, WorkflowStatus.COMPLETED, "c")
    assert as_admin(db, admin.refund_run, boss, done, reason="clip was unusable") == 19
    with db.read() as session:
        rows = admin.refunds(session, boss)
        mine = admin.refunds(session, boss, user_id=boss.id)
    assert [(r.workflow_id, r.actor, r.reason, r.workflow_status) for r in rows] == [
        (done, "boss@example.com", "clip was unusable", "completed"),
        (failed, "system", "boom", "failed"),
    ]
    assert all(r.email == "alice@example.com" and r.amount == 19 for r in rows)
    assert mine == []


def test_a_run_is_never_refunded_twice_nor_while_running(db, boss, alice):
    failed = finished_run(db, alice, WorkflowStatus.FAILED, "f")
    with pytest.raises(RequestValidationError) as refused, db.begin() as session:
        admin.refund_run(session, boss, failed, reason="again")
    assert "already refunded" in refused.value.problems["workflow"]
    running = start_workflow(
        db, user_id=alice.id, request=REQUEST, client_key="r", actor="a"
    ).workflow_id
    with pytest.raises(RequestValidationError), db.begin() as session:
        admin.refund_run(session, boss, running, reason="early")
    with pytest.raises(NotFoundError), db.begin() as session:
        admin.refund_run(session, boss, "missing", reason="r")
    assert_invariant(db)


# -- credit costs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("image.standard.square", -1, "greater than or equal to 0"),
        ("video_per_second.720p.audio", "abc", "whole number"),
        ("image.hd.wide", "5", "whole number"),
        ("image.hd.wide", 2.5, "whole number"),
        ("video_per_second.1080p.silent", None, "whole number"),
        ("video_per_second.1080p.silent", True, "whole number"),
    ],
)
def test_a_bad_cost_is_refused_with_a_message_naming_the_field(db, boss, path, value, message):
    with pytest.raises(RequestValidationError) as refused, db.begin() as session:
        admin.update_credit_costs(session, boss, costs_with(path, value))
    assert list(refused.value.problems) == [path]
    assert message in refused.value.problems[path]
    with db.read() as session:
        assert session.get(Setting, credits.COSTS_SETTING_KEY) is None
        assert admin.audit_log(session, boss) == []


def test_a_cost_edit_is_saved_and_audited_with_old_and_new_values(db, boss, alice):
    edited = costs_with("video_per_second.720p.audio", 5)
    as_admin(db, admin.update_credit_costs, boss, edited)
    as_admin(db, admin.update_credit_costs, boss, edited)
    edited["image"]["standard"]["wide"] = 4
    as_admin(db, admin.update_credit_costs, boss, edited)
    with db.read() as session:
        view = admin.credit_costs(session, boss)
        log = admin.audit_log(session, boss, action_prefix="credit_costs")
    assert view.costs.video_per_second["720p"].audio == 5
    assert view.costs.image["standard"].wide == 4
    assert view.updated_by == "boss@example.com"
    # Saving the same costs again is not a change: two edits, two events, newest first.
    assert [e.actor for e in log] == ["boss@example.com"] * 2
    assert log[1].details["old"]["video_per_second"]["720p"]["audio"] == 2
    assert log[1].details["new"]["video_per_second"]["720p"]["audio"] == 5
    assert log[0].details["old"]["image"]["standard"]["wide"] == 3
    assert log[0].details["new"]["image"]["standard"]["wide"] == 4


def test_new_costs_are_what_the_next_run_reserves(db, boss, alice):
    as_admin(db, admin.update_credit_costs, boss, costs_with("video_per_second.720p.audio", 5))
    start_workflow(db, user_id=alice.id, request=REQUEST, client_key="k", actor="a")
    with db.read() as session:
        assert session.get(User, alice.id).balance == 100 - (3 + 8 * 5)
    assert_invariant(db)


# -- user management ----------------------------------------------------------------------------


def test_create_user_with_a_generated_password_and_a_starting_grant(db, boss):
    created = as_admin(
        db,
        admin.create_user,
        boss,
        "New.Person@Example.com",
        display_name="New Person",
        starting_credits=40,
    )
    assert created.generated_password and len(created.generated_password) >= 12
    user = created.user
    assert (user.email, user.display_name, user.role, user.balance) == (
        "new.person@example.com",
        "New Person",
        Role.USER,
        40,
    )
    with db.read() as session:
        [entry] = admin.ledger_history(session, boss, user.id).entries
        [event] = admin.audit_log(session, boss)
    assert (entry.kind, entry.amount, entry.actor) == ("grant", 40, "boss@example.com")
    assert (event.action, event.target) == ("user.create", f"user:{user.id}")


def test_create_user_refuses_a_taken_email_or_short_password(db, boss, alice):
    with pytest.raises(RequestValidationError), db.begin() as session:
        admin.create_user(session, boss, "alice@example.com")
    with pytest.raises(RequestValidationError), db.begin() as session:
        admin.create_user(session, boss, "x@example.com", password="short")


def test_deactivate_reactivate_and_change_role_are_audited(db, boss, alice):
    assert not as_admin(db, admin.set_active, boss, alice.id, False).is_active
    assert as_admin(db, admin.set_active, boss, alice.id, True).is_active
    assert as_admin(db, admin.set_role, boss, alice.id, Role.ADMIN).role is Role.ADMIN
    assert as_admin(db, admin.set_role, boss, alice.id, Role.ADMIN).role is Role.ADMIN  # no-op
    with db.read() as session:
        log = admin.audit_log(session, boss, action_prefix="user.")
    assert [e.action for e in log] == ["user.role", "user.reactivate", "user.deactivate"]
    assert log[0].details == {"old": "user", "new": "admin"}


def test_a_deactivated_user_cannot_start_a_run(db, boss, alice):
    as_admin(db, admin.set_active, boss, alice.id, False)
    with pytest.raises(PermissionDeniedError):
        start_workflow(db, user_id=alice.id, request=REQUEST, client_key="k", actor="a")


def test_the_last_active_admin_cannot_be_deactivated_or_demoted(db, boss, alice):
    with pytest.raises(RequestValidationError) as refused, db.begin() as session:
        admin.set_active(session, boss, boss.id, False)
    assert "last active admin" in refused.value.problems["is_active"]
    with pytest.raises(RequestValidationError) as refused, db.begin() as session:
        admin.set_role(session, boss, boss.id, Role.USER)
    assert "last active admin" in refused.value.problems["role"]
    # With a second active admin, either may go.
    as_admin(db, admin.set_role, boss, alice.id, Role.ADMIN)
    assert not as_admin(db, admin.set_active, boss, boss.id, False).is_active
    with pytest.raises(RequestValidationError), db.begin() as session:
        admin.set_active(session, alice, alice.id, False)


def test_an_inactive_admin_does_not_count_as_the_admin_left(db, boss, make_user):
    dormant = make_user("dormant@example.com", credits=0, role=Role.ADMIN)
    as_admin(db, admin.set_active, boss, dormant.id, False)
    with pytest.raises(RequestValidationError), db.begin() as session:
        admin.set_role(session, boss, boss.id, Role.USER)


def test_the_invariant_holds_through_a_whole_admin_session(db, boss, alice):
    """Every operation in a row, checking users.balance == sum(ledger) after each."""
    failed = finished_run(db, alice, WorkflowStatus.CANCELLED, "x")
    done = finished_run(db, alice, WorkflowStatus.COMPLETED, "y")
    bob = as_admin(db, admin.create_user, boss, "bob@example.com", starting_credits=25).user
    as_admin(db, admin.grant_credits, boss, bob.id, 10, reason="welcome")
    as_admin(db, admin.deduct_credits, boss, alice.id, 7, reason="correction")
    as_admin(db, admin.refund_run, boss, done, reason="bad clip")
    as_admin(db, admin.update_credit_costs, boss, costs_with("image.hd.square", 9))
    as_admin(db, admin.set_role, boss, bob.id, Role.ADMIN)
    as_admin(db, admin.set_active, boss, bob.id, False)
    with db.read() as session:
        balances = {r.email: r.balance for r in admin.list_users(session, boss)}
        refunded = {r.workflow_id for r in admin.refunds(session, boss)}
    assert balances == {
        "alice@example.com": 100 - 19 - 19 + 19 - 7 + 19,
        "bob@example.com": 35,
        "boss@example.com": 0,
    }
    assert refunded == {failed, done}


def test_two_admins_deactivating_each_other_at_once_leave_one_active(db, boss, make_user):
    other = make_user("other@example.com", credits=0, role=Role.ADMIN)
    barrier = threading.Barrier(2)

    def deactivate(actor: UserView, target: UserView) -> str:
        barrier.wait()
        try:
            with db.begin() as session:
                admin.set_active(session, actor, target.id, False)
        except (RequestValidationError, PermissionDeniedError):
            return "refused"
        return "done"

    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = list(pool.map(deactivate, [boss, other], [other, boss]))
    assert sorted(outcomes) == ["done", "refused"]
    with db.read() as session:
        active = session.execute(
            select(User.email).where(User.role == "admin", User.is_active.is_(True))
        ).scalars()
        assert len(list(active)) == 1


# -- the cost editor's fields (pure) --------------------------------------------------------------


def test_costs_become_one_field_per_leaf_and_come_back_from_typed_fields():
    nested = {"image": {"hd": {"wide": 6, "square": 4}}, "video_per_second": {"720p": {"audio": 2}}}
    fields = admin.cost_fields(nested)
    assert fields == {"image.hd.wide": 6, "image.hd.square": 4, "video_per_second.720p.audio": 2}
    typed = {path: str(value) for path, value in fields.items()}
    assert admin.costs_from_fields(typed) == nested


def test_a_typed_cost_is_a_number_when_it_reads_as_one_and_kept_as_typed_otherwise():
    typed = {"a.whole": " 7 ", "a.half": "2.5", "a.word": "five", "a.empty": ""}
    assert admin.costs_from_fields(typed) == {
        "a": {"whole": 7, "half": 2.5, "word": "five", "empty": ""}
    }


def test_a_cost_edit_lists_only_the_fields_it_changed():
    entry = admin.AuditEntry(
        id=1,
        at=datetime(2026, 1, 1, tzinfo=UTC),
        actor="boss@example.com",
        action=credits.COSTS_AUDIT_ACTION,
        target="credit_costs",
        details={
            "old": {"image": {"hd": {"wide": 6, "square": 4}}},
            "new": {"image": {"hd": {"wide": 8, "square": 4}}},
        },
    )
    assert admin.cost_changes(entry) == [admin.CostChange("image.hd.wide", 6, 8)]
    assert admin.cost_changes(replace(entry, details={})) == []
