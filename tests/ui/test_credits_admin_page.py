"""The credits admin page: only admins reach it or act through it; grants and deductions leave a
ledger row in the acting admin's name and keep every balance equal to its ledger; bad cost edits
are refused on the page and save nothing; accounts are created, deactivated and promoted."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from streamlit.testing.v1 import AppTest

from core import admin, auth, credits
from core.auth import Role
from core.models import AuditEvent, User
from tests.ui.conftest import ROOT, app_for, refreshed, texts

PAGE = "pages/credits_admin.py"


def page_alone(user) -> AppTest:
    at = AppTest.from_file(str(ROOT / PAGE), default_timeout=30)
    if user is not None:
        at.session_state["auth_user_id"] = user.id
    return at.run()


def ledger(runtime, user) -> list[credits.LedgerEntry]:
    with runtime.db.read() as session:
        return credits.history(session, user.id)


def no_mismatches(runtime) -> bool:
    with runtime.db.read() as session:
        return credits.balance_mismatches(session) == []


def audit_count(runtime) -> int:
    with runtime.db.read() as session:
        return session.execute(select(func.count()).select_from(AuditEvent)).scalar_one()


def move(at: AppTest, user, kind: str, amount: int, reason: str) -> AppTest:
    at.run()  # AppTest formats a choice with the last run's options: list `user` first
    at.selectbox(key="credits_move_user").set_value(user.id)
    at.radio(key="credits_move_kind").set_value(kind)
    at.number_input(key="credits_move_amount").set_value(amount)
    at.text_input(key="credits_move_reason").input(reason)
    return at.button(key="credits_move_submit").click().run()


def edit_cost(at: AppTest, field: str, value: str) -> AppTest:
    at.text_input(key=f"credits_cost_{field}").input(value)
    return at.button(key="credits_costs_save").click().run()


@pytest.fixture
def admin_user(make_user):
    return make_user(role=Role.ADMIN)


@pytest.fixture
def page(admin_user) -> AppTest:
    at = app_for(admin_user, page=PAGE)
    assert not at.exception
    return at


def test_a_non_admin_is_refused_the_page_and_sees_no_actions(engine, make_user):
    at = page_alone(make_user())
    assert not at.exception
    assert "This page is for administrators." in texts(at)
    assert not at.dataframe and not at.text_input and not at.button


def test_an_admin_demoted_meanwhile_cannot_act_through_an_open_page(
    runtime, page, admin_user, make_user
):
    target = make_user(credits=5)
    at = page.run()
    at.selectbox(key="credits_move_user").set_value(target.id)
    at.number_input(key="credits_move_amount").set_value(50)
    at.text_input(key="credits_move_reason").input("sneaky top-up")
    with runtime.db.begin() as session:
        session.get(User, admin_user.id).role = Role.USER.value
    at = at.button(key="credits_move_submit").click().run()
    assert not at.exception
    # Refused either by the page itself or by the app, whose menu no longer has the page.
    shown = texts(at)
    assert "This page is for administrators." in shown or "💳 Credits" not in shown
    assert "Granted" not in shown
    assert refreshed(runtime, target).balance == 5
    assert [e.kind for e in ledger(runtime, target)] == ["grant"]  # the starting grant only


def test_users_below_the_threshold_are_flagged_low(page, make_user):
    poor, rich = make_user(credits=0), make_user(credits=5000)
    at = page.run()
    table = at.dataframe[0].value
    flags = dict(zip(table["email"], table["low balance"], strict=True))
    assert flags[poor.email] == "⚠️ low"
    assert flags[rich.email] == ""


def test_a_grant_from_the_page_writes_a_ledger_row_in_the_admins_name(
    runtime, page, admin_user, make_user
):
    target = make_user(credits=10)
    at = move(page, target, "Grant", 25, "welcome bonus")
    assert not at.exception
    assert "Granted 25 credits; the balance is now 35." in texts(at)
    assert target.email in [t.value for t in at.text]
    newest = ledger(runtime, target)[0]
    assert (newest.kind, newest.amount, newest.balance_after) == ("grant", 25, 35)
    assert (newest.actor, newest.reason) == (admin_user.email, "welcome bonus")
    assert refreshed(runtime, target).balance == 35
    assert no_mismatches(runtime)


def test_a_deduction_from_the_page_is_an_adjust_row_and_never_goes_below_zero(
    runtime, page, admin_user, make_user
):
    target = make_user(credits=30)
    at = move(page, target, "Deduct", 12, "duplicate grant")
    assert not at.exception
    newest = ledger(runtime, target)[0]
    assert (newest.kind, newest.amount, newest.balance_after) == ("adjust", -12, 18)
    assert newest.actor == admin_user.email
    rows_before = len(ledger(runtime, target))
    at = move(at, target, "Deduct", 500, "too much")
    assert not at.exception
    assert "cannot deduct 500: the balance is 18" in texts(at)
    assert len(ledger(runtime, target)) == rows_before
    assert refreshed(runtime, target).balance == 18
    assert no_mismatches(runtime)


def test_a_move_without_a_reason_is_refused_with_a_message(runtime, page, make_user):
    target = make_user(credits=10)
    at = move(page, target, "Grant", 5, "   ")
    assert not at.exception
    assert "Not saved:" in texts(at) and "reason is required" in texts(at)
    assert len(ledger(runtime, target)) == 1


@pytest.mark.parametrize(
    ("value", "message"),
    [("-3", "greater than or equal to 0"), ("lots", "must be a whole number of credits")],
)
def test_a_bad_cost_is_refused_on_the_page_and_nothing_is_saved(runtime, page, value, message):
    with runtime.db.read() as session:
        before = credits.load_costs(session)
    audits = audit_count(runtime)
    at = edit_cost(page, "image_standard_square", value)
    assert not at.exception
    errors = " ".join([e.value for e in at.error] + [t.value for t in at.text])
    assert "Not saved:" in errors
    assert "image.standard.square" in errors and message in errors
    with runtime.db.read() as session:
        assert credits.load_costs(session) == before
    assert audit_count(runtime) == audits


def test_a_valid_cost_edit_is_saved_and_audited(runtime, page, admin_user):
    with runtime.db.read() as session:
        before = credits.load_costs(session)
    try:
        at = edit_cost(page, "video_per_second_1080p_audio", "7")
        assert not at.exception
        assert "Credit costs saved" in texts(at)
        with runtime.db.read() as session:
            assert credits.load_costs(session).video_per_second["1080p"].audio == 7
            event = admin.audit_log(session, admin_user, action_prefix="credit_costs")[0]
        assert event.actor == admin_user.email
        assert event.details["new"]["video_per_second"]["1080p"]["audio"] == 7
        changes = next(d.value for d in at.dataframe if "changed" in d.value.columns)
        assert changes["changed"].iloc[0] == "video_per_second.1080p.audio: 3 → 7"
    finally:
        with runtime.db.begin() as session:
            admin.update_credit_costs(session, admin_user, before.model_dump())


def test_a_users_ledger_history_is_listed_newest_first(page, make_user):
    target = make_user(credits=40)
    at = move(page, target, "Grant", 2, "goodwill")
    at.selectbox(key="credits_ledger_user").set_value(target.id).run()
    assert not at.exception
    table = next(d.value for d in at.dataframe if "balance after" in d.value.columns)
    assert list(table["amount"]) == [2, 40]
    assert list(table["reason"])[0] == "goodwill"


def test_an_admin_creates_deactivates_and_promotes_an_account(runtime, page, admin_user):
    at = page
    at.text_input(key="credits_create_email").input("made-on-the-page@example.com")
    at.number_input(key="credits_create_credits").set_value(15)
    at = at.button(key="credits_create_submit").click().run()
    assert not at.exception
    assert "Created the account (user)." in texts(at)
    assert "made-on-the-page@example.com" in [t.value for t in at.text]
    assert "shown only now" in texts(at)
    with runtime.db.read() as session:
        made = auth.find_user(session, "made-on-the-page@example.com")
    assert made.balance == 15 and made.is_active
    assert ledger(runtime, made)[0].actor == admin_user.email

    at.selectbox(key="credits_manage_user").set_value(made.id).run()
    at = at.button(key="credits_manage_active").click().run()
    assert not at.exception
    assert not refreshed(runtime, made).is_active

    at.selectbox(key="credits_manage_user").set_value(made.id).run()
    at.selectbox(key=f"credits_manage_role_{made.id}").set_value(Role.ADMIN).run()
    at = at.button(key="credits_manage_role_save").click().run()
    assert not at.exception
    assert refreshed(runtime, made).role is Role.ADMIN
    assert no_mismatches(runtime)


def test_a_duplicate_email_is_refused_with_a_message(page, admin_user):
    at = page
    at.text_input(key="credits_create_email").input(admin_user.email)
    at = at.button(key="credits_create_submit").click().run()
    assert not at.exception
    assert "Not saved:" in " ".join(e.value for e in at.error)
    assert "already has an account" in " ".join(t.value for t in at.text)


def test_a_database_error_becomes_a_banner_not_a_traceback(page, make_user, monkeypatch):
    def down(*_args, **_kwargs):
        raise OperationalError("INSERT", {}, Exception("database is locked"))

    target = make_user(credits=10)
    page.run()
    monkeypatch.setattr(admin, "grant_credits", down)
    at = move(page, target, "Grant", 5, "retry later")
    assert not at.exception
    assert "The database is not answering right now." in texts(at)
