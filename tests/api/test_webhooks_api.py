"""Webhooks over the API: a run's deliveries in its status, redelivery by its owner with the
same webhook-id, and nothing of it for anyone else. A real run, a real receiver."""

from __future__ import annotations

from collections import Counter

from standardwebhooks.webhooks import Webhook

from core import webhooks
from tests.api.test_workflows_api import BODY, _ended, _is_problem, _start
from tests.helpers import wait_for
from tests.local_http import local_server


def test_deliveries_show_in_the_status_and_the_owner_can_redeliver_one(api):
    alice, bob = api.account(), api.account()
    with local_server(lambda _: (200, {})) as receiver:
        body = {**BODY, "webhookUrl": f"{receiver.url}/hooks", "webhookEvents": ["completed"]}
        workflow_id = _start(alice.client, body).json()["workflowId"]
        assert _ended(alice.client, workflow_id)["status"] == "completed"

        def deliveries() -> list[dict]:
            return alice.client.get(f"/api/workflow/{workflow_id}/status").json()["deliveries"]

        wait_for(lambda: [d["status"] for d in deliveries()] == ["delivered"])
        [delivery] = deliveries()
        assert (delivery["event"], delivery["attempts"], delivery["lastStatusCode"]) == (
            "completed",
            1,
            200,
        )
        path = f"/api/workflow/{workflow_id}/webhooks/{delivery['id']}/redeliver"
        _is_problem(bob.client.post(path), 404)
        answer = alice.client.post(path)
        assert answer.status_code == 202, answer.text
        assert answer.json()["id"] == delivery["id"]
        wait_for(
            lambda: deliveries()[0]["attempts"] == 2 and deliveries()[0]["status"] == "delivered"
        )
        received = list(receiver.requests)
    assert Counter(r.headers["webhook-id"] for r in received) == {delivery["id"]: 2}
    with api.db.begin() as session:
        secret = webhooks.signing_secret(session, alice.user.id)
    for request in received:
        payload = Webhook(secret).verify(request.body, request.headers)
        assert payload["data"]["status"] == "completed"
    _is_problem(alice.client.post(f"/api/workflow/{workflow_id}/webhooks/msg_nope/redeliver"), 404)
