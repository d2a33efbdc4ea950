"""Budgets on the pages: the create page shows what is left beside the balance and cost, a
start past it is refused in the budget's own words, and admins set budgets on the credits page.
(User budgets only: the app's engine is shared by every UI test.)"""

from __future__ import annotations

from sqlalchemy import func, select

from core import budgets
from core.auth import Role
from core.budgets import Scope, ScopeKind
from core.models import Workflow
from core.ui import nav
from tests.ui.conftest import app_for, queued_run, refreshed, texts


def set_budget(runtime, user, monthly: int) -> None:
    with runtime.db.begin() as session:
        budgets.set_budget(session, Scope(ScopeKind.USER, user.id), monthly, actor="t")


def fill(at):
    at.text_area(key="create_image_prompt").input("a red fox in fresh snow")
    at.text_area(key="create_video_prompt").input("slow dolly in")
    at.radio(key="create_duration").set_value("4s")
    return at.run()


def runs_of(runtime, user) -> int:
    with runtime.db.read() as session:
        return session.scalar(
            select(func.count()).select_from(Workflow).where(Workflow.user_id == user.id)
        )


def test_the_create_page_shows_the_budget_left_and_stops_a_start_past_it(
    engine, make_user, runtime
):
    user = make_user(credits=100)
    set_budget(runtime, user, 5)
    at = fill(app_for(user, page=nav.CREATE.path))
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert (metrics["Balance"], metrics["Budget left"]) == ("100 cr", "5 cr")
    assert at.button(key="create_start").disabled
    (warning,) = [w.value for w in at.warning if w.value.startswith("Over budget")]
    assert warning.startswith("Over budget: this needs 11 credits and the monthly budget has 5")
    assert "Your monthly budget: 0 of 5 credits spent; it resets on" in warning


def test_a_retry_the_budget_refuses_says_which_budget_and_charges_nothing(
    engine, make_user, runtime
):
    user = make_user(credits=100)
    workflow_id = queued_run(runtime, user)
    runtime.cancel(workflow_id, user)  # ended (refunded): the watch page offers Retry
    set_budget(runtime, user, 5)
    at = app_for(user, page=nav.WATCH.path, id=workflow_id)
    at.button(key="watch_retry").click().run()
    assert not at.exception
    assert "Not started, nothing charged:" in [e.value for e in at.error]
    shown = texts(at)
    assert f"the monthly budget of {user.email} has 5 of 5 credits left this month" in shown
    assert "at 00:00 UTC (budgets follow calendar months in UTC)" in shown
    assert runs_of(runtime, user) == 1
    assert refreshed(runtime, user).balance == 100


def test_an_admin_sets_a_users_budget_on_the_credits_page(engine, make_user, runtime):
    boss, user = make_user(role=Role.ADMIN), make_user()
    at = app_for(boss, page=nav.CREDITS_ADMIN.path)
    at.radio(key="credits_budget_kind").set_value(ScopeKind.USER).run()
    at.selectbox(key="credits_budget_user").set_value(user.id)
    at.number_input(key="credits_budget_monthly").set_value(70)
    at.button(key="credits_budget_set").click().run()
    assert not at.exception
    with runtime.db.read() as session:
        mine = budgets.tightest(session, user.id, None)
    assert (mine.limit, mine.left) == (70, 70)
    table = next(d.value for d in at.dataframe if "spent this month" in d.value.columns)
    assert user.email in list(table["budget"])
