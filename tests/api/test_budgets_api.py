"""A start past a monthly budget is a 403 problem naming the budget, what is left and when it
resets; nothing starts and nothing is charged."""

from __future__ import annotations

from core import budgets
from core.budgets import Scope, ScopeKind

BODY = {"imagePrompt": "a lighthouse at dusk", "videoPrompt": "slow push in"}


def test_a_start_past_the_budget_is_a_403_naming_it_and_nothing_is_charged(api):
    alice = api.account(credits=100)
    with api.db.begin() as session:
        budgets.set_budget(
            session, Scope(ScopeKind.USER, alice.user.id), 5, actor="admin@example.com"
        )

    answer = alice.client.post("/api/workflow/start", json=BODY)

    assert answer.status_code == 403, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    assert problem["type"] == "urn:reelforge:problem:budget-exceeded"
    assert (problem["budget"], problem["limit"], problem["left"]) == (
        f"user:{alice.user.id}",
        5,
        5,
    )
    assert problem["resetsAt"].endswith("T00:00:00+00:00")
    assert f"the monthly budget of {alice.user.email} has 5 of 5 credits left" in problem["detail"]
    assert "00:00 UTC" in problem["detail"]
    me = alice.client.get("/api/me").json()
    assert me["balance"] == 100
    assert alice.client.get("/api/workflows").json()["items"] == []
