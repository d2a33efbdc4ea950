"""The ledger: atomic reservations under concurrency, exactly-once refunds, the invariant."""

from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select

from core import credits
from core.errors import InsufficientCreditsError, NotFoundError, RequestValidationError
from core.models import CreditTransaction, Workflow
from core.schemas import parse_request
from core.workflows import start_workflow
from tests.reliability import record

REQUEST = parse_request({"imagePrompt": "a fox", "videoPrompt": "dolly in"})
COST = credits.cost_of(REQUEST, credits.DEFAULT_CREDIT_COSTS)


def assert_invariant(db):
    with db.read() as session:
        assert credits.balance_mismatches(session) == []


def balance_of(db, user_id: int) -> int:
    with db.read() as session:
        return credits.history(session, user_id, limit=1)[0].balance_after


def test_a_new_account_gets_its_starting_grant_as_a_ledger_row(db, make_user):
    user = make_user(credits=100)
    with db.read() as session:
        entries = credits.history(session, user.id)
    assert [(e.kind, e.amount, e.balance_after) for e in entries] == [("grant", 100, 100)]
    assert user.balance == 100
    assert_invariant(db)


@pytest.mark.parametrize(("starts", "affordable"), [(50, 10), (500, 100)])
def test_concurrent_starts_beyond_the_balance_start_exactly_what_it_covers(
    db, make_user, starts, affordable
):
    user = make_user(credits=COST * affordable)

    def start(i: int) -> str:
        try:
            start_workflow(db, user_id=user.id, request=REQUEST, client_key=f"k{i}", actor="t")
            return "started"
        except InsufficientCreditsError:
            return "refused"

    with ThreadPoolExecutor(max_workers=16) as pool:
        outcomes = list(pool.map(start, range(starts)))

    assert outcomes.count("started") == affordable
    assert outcomes.count("refused") == starts - affordable
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(Workflow)) == affordable
    assert balance_of(db, user.id) == 0
    assert_invariant(db)
    if starts == 500:
        started = outcomes.count("started")
        record(
            "credits",
            db.engine.url.render_as_string(),
            starts=starts,
            affordable=affordable,
            started=started,
        )


def test_a_refused_start_writes_nothing(db, make_user):
    user = make_user(credits=COST - 1)
    with pytest.raises(InsufficientCreditsError) as caught:
        start_workflow(db, user_id=user.id, request=REQUEST, client_key="k", actor="t")
    assert (caught.value.needed, caught.value.balance) == (COST, COST - 1)
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(Workflow)) == 0
        assert session.scalar(select(func.count()).select_from(CreditTransaction)) == 1


def test_the_same_client_key_twice_makes_one_run_and_one_charge(db, make_user):
    user = make_user(credits=100)
    first = start_workflow(db, user_id=user.id, request=REQUEST, client_key="click", actor="t")
    second = start_workflow(db, user_id=user.id, request=REQUEST, client_key="click", actor="t")
    assert first.created and not second.created
    assert second.workflow_id == first.workflow_id
    assert balance_of(db, user.id) == 100 - COST


def test_a_double_click_racing_itself_makes_one_run(db, make_user):
    user = make_user(credits=100)

    def start(_: int):
        return start_workflow(db, user_id=user.id, request=REQUEST, client_key="same", actor="t")

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(start, range(8)))
    assert len({started.workflow_id for started in results}) == 1
    assert sum(started.created for started in results) == 1
    assert balance_of(db, user.id) == 100 - COST
    assert_invariant(db)


def test_a_refund_happens_exactly_once_even_when_raced(db, make_user):
    user = make_user(credits=100)
    workflow_id = start_workflow(
        db, user_id=user.id, request=REQUEST, client_key="k", actor="t"
    ).workflow_id

    def refund(_: int) -> int:
        with db.begin() as session:
            return credits.refund(session, workflow_id, reason="test")

    with ThreadPoolExecutor(max_workers=6) as pool:
        refunded = list(pool.map(refund, range(6)))
    assert sorted(refunded) == [0, 0, 0, 0, 0, COST]
    assert balance_of(db, user.id) == 100
    assert_invariant(db)


def test_concurrent_grants_never_lose_an_update(db, make_user):
    user = make_user(credits=0)

    def grant(_: int) -> None:
        with db.begin() as session:
            credits.grant(session, user.id, 5, actor="admin@example.com", reason="race")

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(grant, range(40)))
    assert balance_of(db, user.id) == 200
    assert_invariant(db)


def test_an_adjustment_cannot_take_a_balance_below_zero(db, make_user):
    user = make_user(credits=10)
    with pytest.raises(InsufficientCreditsError), db.begin() as session:
        credits.adjust(session, user.id, -11, actor="admin@example.com", reason="oops")
    with db.begin() as session:
        assert credits.adjust(session, user.id, -10, actor="a@example.com", reason="fix") == 0
    assert_invariant(db)


def test_an_adjustment_needs_a_reason(db, make_user):
    user = make_user(credits=10)
    with pytest.raises(RequestValidationError) as caught, db.begin() as session:
        credits.adjust(session, user.id, 5, actor="admin@example.com", reason="  ")
    assert caught.value.problems == {"reason": "is required for an adjustment"}


def test_an_adjustment_of_nothing_is_refused_naming_the_amount(db, make_user):
    user = make_user(credits=10)
    with pytest.raises(RequestValidationError) as caught, db.begin() as session:
        credits.adjust(session, user.id, 0, actor="admin@example.com", reason="why")
    assert caught.value.problems == {"amount": "must not be zero"}
    with db.begin() as session:
        assert credits.adjust(session, user.id, 1, actor="admin@example.com", reason="why") == 11
    assert_invariant(db)


@pytest.mark.parametrize(
    ("amount", "problem"),
    [
        (-credits.MAX_AMOUNT - 1, "must be between -1,000,000,000 and 1,000,000,000"),
        (credits.MAX_AMOUNT + 1, "must be between -1,000,000,000 and 1,000,000,000"),
        (True, "must be a whole number of credits"),
    ],
)
def test_an_adjustment_outside_the_bound_is_refused_naming_the_amount(
    db, make_user, amount, problem
):
    user = make_user(credits=10)
    with pytest.raises(RequestValidationError) as caught, db.begin() as session:
        credits.adjust(session, user.id, amount, actor="admin@example.com", reason="why")
    assert caught.value.problems == {"amount": problem}
    assert_invariant(db)


@pytest.mark.parametrize(
    "bad", [{"image": {"standard": {"square": -1, "wide": 3}}}, {"image": "x"}]
)
def test_invalid_costs_are_refused(db, bad):
    raw = credits.DEFAULT_CREDIT_COSTS.model_dump() | bad
    with pytest.raises(RequestValidationError), db.begin() as session:
        credits.save_costs(session, raw, actor="admin@example.com")


def test_saved_costs_are_what_the_next_run_pays(db, make_user):
    raw = credits.DEFAULT_CREDIT_COSTS.model_dump()
    raw["video_per_second"]["720p"]["audio"] = 5
    with db.begin() as session:
        credits.save_costs(session, raw, actor="admin@example.com")
    with db.read() as session:
        assert credits.cost_of(REQUEST, credits.load_costs(session)) == 3 + 8 * 5


def test_grants_racing_refunds_never_lose_an_update(db, make_user):
    user = make_user(credits=COST * 20)
    started = [
        start_workflow(
            db, user_id=user.id, request=REQUEST, client_key=f"k{i}", actor="t"
        ).workflow_id
        for i in range(20)
    ]

    def grant(_: int) -> None:
        with db.begin() as session:
            credits.grant(session, user.id, 3, actor="admin@example.com", reason="race")

    def refund(workflow_id: str) -> None:
        with db.begin() as session:
            credits.refund(session, workflow_id, reason="race")

    with ThreadPoolExecutor(max_workers=12) as pool:
        jobs = [pool.submit(grant, i) for i in range(40)]
        jobs += [pool.submit(refund, wid) for wid in started * 2]  # every refund asked twice
        for job in jobs:
            job.result()
    assert balance_of(db, user.id) == COST * 20 + 40 * 3
    assert_invariant(db)
    with db.read() as session:
        refunded = session.scalars(
            select(CreditTransaction.workflow_id).where(CreditTransaction.kind == "refund")
        ).all()
    assert sorted(refunded) == sorted(started)
    record(
        "credits",
        db.engine.url.render_as_string(),
        grants=40,
        refund_calls=2 * len(started),
        refunded_runs=len(set(refunded)),
    )


def ledger_rows(db, user_id: int) -> list[tuple]:
    with db.read() as session:
        rows = session.execute(
            select(
                CreditTransaction.kind,
                CreditTransaction.amount,
                CreditTransaction.workflow_id,
                CreditTransaction.reason,
                CreditTransaction.idempotency_key,
            )
            .where(CreditTransaction.user_id == user_id)
            .order_by(CreditTransaction.id)
        )
        return [tuple(r) for r in rows]


def test_every_ledger_row_says_what_why_and_for_which_run(db, make_user):
    user = make_user(credits=100)
    workflow_id = start_workflow(
        db, user_id=user.id, request=REQUEST, client_key="k", actor="t"
    ).workflow_id
    with db.begin() as session:
        credits.adjust(session, user.id, -5, actor="admin@example.com", reason="goodwill fix")
        credits.grant(session, user.id, 7, actor="admin@example.com", reason="welcome back")
        credits.refund(session, workflow_id, reason="it failed")
    assert ledger_rows(db, user.id)[1:] == [
        ("reserve", -COST, workflow_id, "credits reserved at start", f"reserve:{workflow_id}"),
        ("adjust", -5, None, "goodwill fix", None),
        ("grant", 7, None, "welcome back", None),
        ("refund", COST, workflow_id, "it failed", f"refund:{workflow_id}"),
    ]


@pytest.mark.parametrize("cost", [0, 1])
def test_a_free_run_gets_no_refund_row_and_a_one_credit_run_gets_its_credit(db, make_user, cost):
    raw = credits.DEFAULT_CREDIT_COSTS.model_dump()
    raw["image"]["standard"]["wide"] = cost
    raw["video_per_second"]["720p"]["audio"] = 0
    with db.begin() as session:
        credits.save_costs(session, raw, actor="admin@example.com")
    user = make_user(credits=10)
    workflow_id = start_workflow(
        db, user_id=user.id, request=REQUEST, client_key="k", actor="t"
    ).workflow_id
    with db.begin() as session:
        assert credits.refund(session, workflow_id, reason="it failed") == cost
    refunds = [row for row in ledger_rows(db, user.id) if row[0] == "refund"]
    assert [row[1] for row in refunds] == ([cost] if cost else [])
    assert balance_of(db, user.id) == 10


@pytest.mark.parametrize("amount", [0, -1])
def test_a_grant_of_nothing_or_less_is_refused_naming_the_amount(db, make_user, amount):
    user = make_user(credits=10)
    with pytest.raises(RequestValidationError) as caught, db.begin() as session:
        credits.grant(session, user.id, amount, actor="admin@example.com", reason="why")
    assert caught.value.problems == {"amount": "must be between 1 and 1,000,000,000"}
    with db.begin() as session:
        assert credits.grant(session, user.id, 1, actor="admin@example.com", reason="why") == 11


def test_credits_for_a_user_that_does_not_exist_are_refused_by_name(db):
    with pytest.raises(NotFoundError, match="user 999 does not exist"), db.begin() as session:
        credits.grant(session, 999, 5, actor="admin@example.com", reason="why")
