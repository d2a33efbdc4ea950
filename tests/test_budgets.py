"""Monthly budgets: refused atomically with the reservation under concurrency, one alert per
threshold and month, refunds give budget back, months reset, and the ledger invariant holds."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from core import admin, budgets, clock, credits, inbox
from core.auth import Role, create_user
from core.budgets import TEAM, Scope, ScopeKind
from core.errors import BudgetExceededError
from core.models import BudgetAlert, WebhookDelivery, Workflow
from core.projects import create_project
from core.schemas import parse_request
from core.workflows import start_workflow

REQUEST = parse_request({"imagePrompt": "a fox", "videoPrompt": "dolly in"})
COST = credits.cost_of(REQUEST, credits.DEFAULT_CREDIT_COSTS)
# The admin prices a short silent 720p run at 20 credits (standard wide still 4, 4 s at 4/s), so
# two runs are 80% of a 50-credit cap and a third does not fit.
TWENTY = parse_request(
    {
        "imagePrompt": "a lighthouse at dusk",
        "videoPrompt": "slow push in",
        "videoConfig": {"duration": "4s", "resolution": "720p", "generateAudio": False},
    }
)
PRICES = credits.DEFAULT_CREDIT_COSTS.model_dump()
PRICES["image"]["standard"]["wide"] = 4
PRICES["video_per_second"]["720p"]["silent"] = 4


def assert_invariant(db) -> None:
    with db.read() as session:
        assert credits.balance_mismatches(session) == []


def set_budget(db, scope: Scope, monthly: int) -> None:
    with db.begin() as session:
        budgets.set_budget(session, scope, monthly, actor="admin@example.com")


def status_of(db, scope: Scope) -> budgets.BudgetStatus:
    with db.read() as session:
        return next(s for s in budgets.statuses(session) if s.scope == scope)


def start(db, user, key: str, request=REQUEST) -> str:
    workflow_id = start_workflow(
        db, user_id=user.id, request=request, client_key=key, actor="t"
    ).workflow_id
    return workflow_id


def race(db, users, starts: int, request=REQUEST) -> tuple[list[str], float]:
    """`starts` concurrent starts, taking turns among `users` (one user or several)."""
    users = users if isinstance(users, list) else [users]

    def attempt(i: int) -> str:
        try:
            start(db, users[i % len(users)], f"k{i}", request)
            return "started"
        except BudgetExceededError:
            return "refused"

    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=16) as pool:
        outcomes = list(pool.map(attempt, range(starts)))
    return outcomes, time.perf_counter() - began


def alerts(db) -> list[tuple[str, int]]:
    with db.read() as session:
        rows = session.execute(
            select(BudgetAlert.scope_key, BudgetAlert.threshold).order_by(BudgetAlert.id)
        )
        return [tuple(r) for r in rows]


def kinds_in_inbox(db, user) -> list[str]:
    with db.read() as session:
        return [n.kind for n in inbox.recent(session, user.id)]


def test_50_concurrent_starts_against_a_budget_covering_10_start_exactly_10(db, make_user):
    user = make_user(credits=COST * 100)
    set_budget(db, Scope(ScopeKind.USER, user.id), COST * 10)

    outcomes, seconds = race(db, user, 50)

    assert (outcomes.count("started"), outcomes.count("refused")) == (10, 40)
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(Workflow)) == 10
    status = status_of(db, Scope(ScopeKind.USER, user.id))
    assert (status.spent, status.left) == (COST * 10, 0)
    assert_invariant(db)
    print(f"\nbudget race on {db.dialect}: 50 starts, 10 started, 40 refused in {seconds:.2f} s")


def test_a_team_budget_holds_against_50_concurrent_starts_by_5_users(db, make_user):
    # Five users: no user row serialises these starts, only the team budget's lock does.
    team = [make_user(credits=COST * 20) for _ in range(5)]
    set_budget(db, TEAM, COST * 10)

    outcomes, _ = race(db, team, 50)

    assert outcomes.count("started") == 10
    assert status_of(db, TEAM).spent == COST * 10
    assert [t for _, t in alerts(db)] == [80, 100]
    assert_invariant(db)


def test_one_alert_per_threshold_under_50_concurrent_starts_crossing_both(db, make_user):
    owner = make_user(credits=COST * 100)
    boss = make_user(credits=0, role=Role.ADMIN)
    with db.begin() as session:
        project = create_project(session, owner.id, "Winter")
    set_budget(db, Scope(ScopeKind.PROJECT, project.id), COST * 10)
    in_project = REQUEST.model_copy(update={"project_id": project.id})

    outcomes, _ = race(db, owner, 50, in_project)

    assert outcomes.count("started") == 10
    key = f"project:{project.id}"
    assert alerts(db) == [(key, 80), (key, 100)]
    for person in (owner, boss):  # the project's owner and every admin, once each
        assert kinds_in_inbox(db, person).count("budget_alert") == 2
    assert_invariant(db)


def test_each_alert_also_leaves_once_through_the_installations_webhook(db, make_user):
    user = make_user(credits=COST * 100)
    set_budget(db, Scope(ScopeKind.USER, user.id), COST * 10)
    hooked = "https://operators.example.com/hooks"

    for i in range(10):
        start_workflow(
            db,
            user_id=user.id,
            request=REQUEST,
            client_key=f"k{i}",
            actor="t",
            global_webhook_url=hooked,
        )

    with db.read() as session:
        sent = session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.event == "budget")
            .order_by(WebhookDelivery.created_at)
        ).all()
    assert [(d.url, d.payload["type"], d.payload["data"]["threshold"]) for d in sent] == [
        (hooked, "budget.alert", 80),
        (hooked, "budget.alert", 100),
    ]
    assert sent[0].payload["data"]["budget"] == {"scope": "user", "name": user.email}
    assert sent[1].payload["data"]["spent"] == COST * 10


def test_a_refusal_names_the_budget_what_is_left_and_when_it_resets(db, make_user):
    user = make_user(email="capped@example.com", credits=COST * 10)
    set_budget(db, Scope(ScopeKind.USER, user.id), COST + COST // 2)
    with clock.travel_to(datetime(2026, 11, 30, 12, tzinfo=UTC)):
        start(db, user, "first")
        with pytest.raises(BudgetExceededError) as refused:
            start(db, user, "second")
    assert str(refused.value) == (
        f"This run costs {COST} credits but the monthly budget of capped@example.com has "
        f"{COST // 2} of {COST + COST // 2} credits left this month. It resets on "
        "01 December 2026 at 00:00 UTC (budgets follow calendar months in UTC)."
    )
    assert refused.value.left == COST // 2
    with db.read() as session:  # nothing of the refused start was written
        assert session.scalar(select(func.count()).select_from(Workflow)) == 1
    assert_invariant(db)


def test_a_refund_gives_the_budget_back(db, make_user):
    user = make_user(credits=COST * 10)
    set_budget(db, TEAM, COST * 2)
    first = start(db, user, "a")
    start(db, user, "b")
    with pytest.raises(BudgetExceededError):
        start(db, user, "c")
    with db.begin() as session:
        credits.refund(session, first, reason="failed")

    start(db, user, "c")

    assert status_of(db, TEAM).spent == COST * 2
    assert_invariant(db)


def test_the_month_resets_and_a_late_refund_returns_to_its_own_month(db, make_user):
    user = make_user(credits=COST * 10)
    scope = Scope(ScopeKind.USER, user.id)
    set_budget(db, scope, COST)
    with clock.travel_to(datetime(2027, 1, 31, 23, 59, tzinfo=UTC)):
        january = start(db, user, "jan")
        with pytest.raises(BudgetExceededError) as refused:
            start(db, user, "jan-2")
    assert refused.value.resets_at == datetime(2027, 2, 1, tzinfo=UTC)

    with clock.travel_to(datetime(2027, 2, 1, 0, 1, tzinfo=UTC)):
        start(db, user, "feb")
        with db.begin() as session:  # January's run fails in February
            credits.refund(session, january, reason="failed")
        assert status_of(db, scope).spent == COST  # February's own run only
        with pytest.raises(BudgetExceededError):
            start(db, user, "feb-2")
    with db.read() as session:
        at_january = budgets.statuses(session, now=datetime(2027, 1, 15, tzinfo=UTC))
    assert at_january[0].spent == 0
    assert_invariant(db)


def test_a_raised_limit_alerts_again_at_its_own_thresholds(db, make_user):
    user = make_user(credits=COST * 20)
    scope = Scope(ScopeKind.USER, user.id)
    set_budget(db, scope, COST)  # one run: 100% at once (and 80% with it)
    start(db, user, "a")
    set_budget(db, scope, COST * 5)
    for key in "bcd":
        start(db, user, key)  # 4 of 5: 80% of the new limit
    assert [t for _, t in alerts(db)] == [80, 100, 80]


def test_the_done_when_scenario_cap_50_third_run_refused_alert_in_both_inboxes(db):
    with db.begin() as session:
        boss = create_user(session, "boss@example.com", role=Role.ADMIN)
        artist = create_user(session, "artist@example.com", starting_credits=200)
        admin.update_credit_costs(session, boss, PRICES)
        admin.set_budget(session, boss, Scope(ScopeKind.USER, artist.id), 50)
        assert credits.cost_of(TWENTY, credits.load_costs(session)) == 20

    start(db, artist, "one", TWENTY)
    start(db, artist, "two", TWENTY)
    with pytest.raises(BudgetExceededError) as refused:
        start(db, artist, "three", TWENTY)

    assert "the monthly budget of artist@example.com has 10 of 50 credits left" in str(
        refused.value
    )
    with db.read() as session:
        mine = inbox.recent(session, artist.id)
        theirs = inbox.recent(session, boss.id)
    alert = "Budget alert: 80% of the monthly budget of artist@example.com is spent"
    assert [n.title for n in mine if n.kind == "budget_alert"] == [alert]
    assert [n.title for n in theirs if n.kind == "budget_alert"] == [alert]
    assert "40 of 50 credits spent" in mine[0].body
    assert_invariant(db)
