"""The inbox: the sidebar's bell counts unread entries, the page lists them, marks them read and
opens the run (the watch page) or the ledger entry it links to."""

from __future__ import annotations

import re

from streamlit.testing.v1 import AppTest

from core import admin, inbox
from core.auth import Role
from core.states import WorkflowStatus
from core.ui import nav
from tests.ui.conftest import ROOT, app_for, end_running, queued_run, running_run, texts

PAGE = "pages/inbox.py"


def inbox_page(user) -> AppTest:
    at = AppTest.from_file(str(ROOT / PAGE), default_timeout=30)
    at.session_state["auth_user_id"] = user.id
    return at.run()


def bell(at: AppTest) -> str:
    links = [e.proto.label for e in at.sidebar.get("page_link") if "Inbox" in e.proto.label]
    assert len(links) == 1, links
    return links[0]


def unread(runtime, user) -> int:
    with runtime.db.read() as session:
        return inbox.unread_count(session, user.id)


def test_the_bell_counts_unread_entries_and_the_page_marks_them_read(engine, make_user, runtime):
    boss = make_user(role=Role.ADMIN)
    user = make_user(credits=0)
    with runtime.db.begin() as session:
        admin.grant_credits(session, boss, user.id, 50, reason="for the winter campaign")
    workflow_id = queued_run(runtime, user)
    runtime.cancel(workflow_id, user)  # ends it at once, refunded: "your run was cancelled"

    assert bell(app_for(user)) == "Inbox · 2 unread"

    at = inbox_page(user)
    assert not at.exception
    shown = texts(at)
    assert re.search(r"Your run was cancelled; \d+ credits refunded", shown)
    assert "You received 50 credits" in shown
    assert "for the winter campaign" in shown  # the admin's reason, literally
    with runtime.db.read() as session:
        grant, cancelled = sorted(inbox.recent(session, user.id), key=lambda n: n.id)

    at.button(key=f"inbox_read_{grant.id}").click().run()
    assert unread(runtime, user) == 1
    assert bell(app_for(user)) == "Inbox · 1 unread"

    at.button(key="inbox_mark_all").click().run()
    assert unread(runtime, user) == 0
    assert bell(app_for(user)) == "Inbox"


def test_an_entry_opens_its_run_or_its_ledger_entry_and_is_read(engine, make_user, runtime):
    boss = make_user(role=Role.ADMIN)
    user = make_user(credits=0)
    with runtime.db.begin() as session:
        admin.grant_credits(session, boss, user.id, 40, reason="top-up")
    workflow_id = queued_run(runtime, user)
    runtime.cancel(workflow_id, user)
    with runtime.db.read() as session:
        grant, cancelled = sorted(inbox.recent(session, user.id), key=lambda n: n.id)
    assert cancelled.run_id == workflow_id

    at = app_for(user, page=PAGE)  # in the app: "Open run" switches to a page it knows
    at.button(key=f"inbox_open_{grant.id}").click().run()
    assert not at.exception
    assert at.query_params["entry"] == str(grant.ledger_id)
    assert f"Ledger entry #{grant.ledger_id}" in texts(at)
    assert "top-up" in texts(at)

    at.button(key=f"inbox_open_{cancelled.id}").click().run()
    assert not at.exception
    assert at.query_params["id"] == workflow_id
    assert unread(runtime, user) == 0


def test_another_users_ledger_entry_is_not_shown(engine, make_user, runtime):
    owner, other = make_user(credits=10), make_user(credits=10)
    with runtime.db.read() as session:
        (theirs,) = inbox.recent(session, owner.id)
    at = AppTest.from_file(str(ROOT / PAGE), default_timeout=30)
    at.session_state["auth_user_id"] = other.id
    at.query_params["entry"] = str(theirs.ledger_id)
    at.run()
    assert not at.exception
    assert "There is no such ledger entry in your account." in texts(at)


def test_the_watch_pages_poll_notices_a_new_entry_for_the_bell(engine, make_user, runtime):
    boss, user = make_user(role=Role.ADMIN), make_user(credits=100)
    workflow_id = running_run(runtime, user, {})
    at = app_for(user, page=nav.WATCH.path, id=workflow_id)
    assert at.session_state["inbox_unread_shown"] == 1  # the starting grant, as the bell shows
    with runtime.db.begin() as session:
        admin.grant_credits(session, boss, user.id, 5, reason="bonus")

    at.run()  # the live panel's poll: it sees the new entry and reruns the app for the bell

    assert not at.exception
    assert at.session_state["inbox_unread_shown"] == 2
    end_running(runtime, workflow_id, WorkflowStatus.CANCELLED, "done looking")
