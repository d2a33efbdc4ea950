"""`reuseStill` on the API's start: on by default, so a second run of the same image request
pays for no second still; a value that is not a boolean is a 422 naming the field."""

from __future__ import annotations

from sqlalchemy import select

from core.models import Workflow
from tests.api.test_workflows_api import BODY, _ended, _is_problem, _start


def test_a_second_start_of_the_same_image_request_reuses_the_still_unless_told_not_to(api):
    alice = api.account(credits=100)
    first = _ended(alice.client, _start(alice.client).json()["workflowId"])
    assert first["status"] == "completed"

    second = _start(alice.client, {**BODY, "videoPrompt": "slow orbit around the lighthouse"})
    assert second.status_code == 202
    reused = _ended(alice.client, second.json()["workflowId"])
    assert reused["status"] == "completed"
    assert reused["costCredits"] == first["costCredits"] - 3  # a wide standard still is 3
    with api.db.read() as session:
        source = session.execute(
            select(Workflow.reuse_image_from).where(Workflow.id == reused["workflowId"])
        ).scalar_one()
    assert source == first["workflowId"]
    balance = alice.client.get("/api/me").json()["balance"]
    assert balance == 100 - first["costCredits"] - reused["costCredits"]

    problem = _is_problem(_start(alice.client, {**BODY, "reuseStill": "sometimes"}), 422)
    assert [e["field"] for e in problem["errors"]] == ["reuseStill"]
    assert alice.client.get("/api/me").json()["balance"] == balance
