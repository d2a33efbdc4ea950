"""The HTTP API end to end: real server, real HTTP, real database, offline providers."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import select, update

from core import tokens
from core.auth import Role
from core.clock import utcnow
from core.errors import RequestValidationError
from core.media import probe_video
from core.models import ApiToken, Asset, CreditTransaction, User
from core.schemas import parse_request
from core.states import StepName
from tests.helpers import wait_for

BODY = {
    "imagePrompt": "a lighthouse at dusk, waves below",
    "videoPrompt": "slow push in, the beam sweeping",
    "imageConfig": {"size": "1792x1024"},
    "videoConfig": {"duration": "4s", "resolution": "720p"},
}


def _start(client: httpx.Client, body: dict = BODY, **headers: str) -> httpx.Response:
    return client.post("/api/workflow/start", json=body, headers=headers)


def _ended(client: httpx.Client, workflow_id: str) -> dict:
    status: dict = {}

    def ended() -> bool:
        status.update(client.get(f"/api/workflow/{workflow_id}/status").json())
        return status["status"] in ("completed", "failed", "cancelled")

    wait_for(ended, timeout_s=60)
    return status


def _is_problem(answer: httpx.Response, status: int) -> dict:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    assert problem["status"] == status and problem["title"] and "type" in problem
    return problem


def test_a_started_run_completes_with_six_steps_and_a_playable_video(api):
    alice = api.account(credits=100)
    started = _start(alice.client)
    assert started.status_code == 202
    run = started.json()
    # As it stood when answered: an instant offline run may already be running or done.
    assert run["status"] in ("queued", "running", "completed")
    assert started.headers["location"] == run["links"]["status"]
    status = _ended(alice.client, run["workflowId"])
    assert status["status"] == "completed" and status["progress"] == 100
    assert [s["name"] for s in status["steps"]] == [name.value for name in StepName]
    assert all(s["state"] == "completed" and s["attempts"] >= 1 for s in status["steps"])
    assert status["error"] is None and status["refund"] is None
    final = alice.client.get(run["links"]["status"])
    assert "retry-after" not in final.headers
    video = next(a for a in status["assets"] if a["kind"] == "video")
    download = alice.client.get(video["url"])
    assert download.status_code == 200
    assert download.headers["content-type"] == "video/mp4"
    assert abs(probe_video(download.content).duration_s - 4) <= 0.2
    me = alice.client.get("/api/me").json()
    assert me["email"] == alice.user.email
    assert me["balance"] == 100 - status["costCredits"]


def test_another_users_run_looks_missing_to_them_on_every_endpoint_but_an_admin_reads_it(api):
    alice, bob = api.account(), api.account()
    admin = api.account(role=Role.ADMIN)
    workflow_id = _start(alice.client).json()["workflowId"]
    _ended(alice.client, workflow_id)
    missing = "0" * 32
    for path in ("status", "assets/video"):
        theirs = _is_problem(bob.client.get(f"/api/workflow/{workflow_id}/{path}"), 404)
        nobodys = _is_problem(bob.client.get(f"/api/workflow/{missing}/{path}"), 404)
        assert theirs["detail"].replace(workflow_id, "ID") == nobodys["detail"].replace(
            missing, "ID"
        )
    _is_problem(bob.client.post(f"/api/workflow/{workflow_id}/cancel"), 404)
    assert bob.client.get("/api/workflows").json()["items"] == []
    assert admin.client.get(f"/api/workflow/{workflow_id}/status").status_code == 200


def test_no_revoked_expired_or_deactivated_token_gets_in(api):
    revoked, expired, deactivated = api.account(), api.account(), api.account()
    with api.db.begin() as session:
        tokens.revoke_token(session, revoked.token[:8])
        session.execute(
            update(ApiToken).where(ApiToken.user_id == expired.user.id).values(expires_at=utcnow()),
            execution_options={"synchronize_session": False},
        )
        session.execute(
            update(User).where(User.id == deactivated.user.id).values(is_active=False),
            execution_options={"synchronize_session": False},
        )
    clients = [a.client for a in (revoked, expired, deactivated)]
    clients += [api.client(), api.client("made-up-token")]
    for client in clients:
        for answer in (client.get("/api/me"), _start(client)):
            _is_problem(answer, 401)
            assert answer.headers["www-authenticate"] == "Bearer"


def test_a_bad_body_is_a_422_naming_each_field_as_the_pages_do_and_charges_nothing(api):
    alice = api.account(credits=100)
    bad = {**BODY, "imageConfig": {"size": "640x480"}}
    del bad["videoPrompt"]
    problem = _is_problem(_start(alice.client, bad), 422)
    shown = {e["field"]: e["message"] for e in problem["errors"]}
    with pytest.raises(RequestValidationError) as pages:  # the pages' parse of the same body
        parse_request(bad)
    assert shown == pages.value.problems
    assert set(shown) == {"videoPrompt", "imageConfig.size"}
    assert "Traceback" not in problem["detail"]
    assert alice.client.get("/api/me").json()["balance"] == 100
    assert alice.client.get("/api/workflows").json()["items"] == []


def test_not_enough_credits_is_a_402_and_nothing_starts(api):
    poor = api.account(credits=1)
    problem = _is_problem(_start(poor.client), 402)
    assert problem["balance"] == 1 and problem["needed"] > 1
    assert poor.client.get("/api/workflows").json()["items"] == []


def test_cancelling_an_ended_run_is_a_409(api):
    alice = api.account()
    workflow_id = _start(alice.client).json()["workflowId"]
    _ended(alice.client, workflow_id)
    _is_problem(alice.client.post(f"/api/workflow/{workflow_id}/cancel"), 409)


def test_a_cancelled_run_stops_and_its_status_shows_the_refund(start_api):
    api = start_api(latency_s=2)  # each provider call takes 2 s: time enough to cancel
    alice = api.account(credits=100)
    started = _start(alice.client).json()
    running = alice.client.get(started["links"]["status"])
    assert int(running.headers["retry-after"]) >= 1
    cancel = alice.client.post(started["links"]["cancel"])
    assert cancel.status_code == 202
    assert cancel.json()["cancelStage"] in ("cancelling", "cancelled")
    status = _ended(alice.client, started["workflowId"])
    assert status["status"] == "cancelled"
    assert status["refund"]["credits"] == status["costCredits"]
    assert status["error"]["message"]
    assert alice.client.get("/api/me").json()["balance"] == 100


def test_the_same_idempotency_key_twice_is_one_run_and_one_charge(api):
    alice = api.account(credits=100)
    first = _start(alice.client, **{"Idempotency-Key": "nightly-42"})
    again = _start(alice.client, **{"Idempotency-Key": "nightly-42"})
    assert first.status_code == again.status_code == 202
    assert first.json()["workflowId"] == again.json()["workflowId"]
    status = _ended(alice.client, first.json()["workflowId"])
    assert len(alice.client.get("/api/workflows").json()["items"]) == 1
    assert alice.client.get("/api/me").json()["balance"] == 100 - status["costCredits"]
    other_body = {**BODY, "videoPrompt": "a different take"}
    reused = _start(alice.client, other_body, **{"Idempotency-Key": "nightly-42"})
    problem = _is_problem(reused, 422)
    assert problem["errors"][0]["field"] == "Idempotency-Key"


def test_the_same_idempotency_key_sent_at_once_from_20_clients_is_one_run_and_one_charge(api):
    alice = api.account(credits=100)
    clients = [api.client(alice.token) for _ in range(20)]
    with ThreadPoolExecutor(len(clients)) as pool:
        answers = list(pool.map(lambda c: _start(c, **{"Idempotency-Key": "burst"}), clients))
    assert {a.status_code for a in answers} == {202}
    assert len({a.json()["workflowId"] for a in answers}) == 1
    with api.db.read() as session:
        reserves = session.execute(
            select(CreditTransaction.amount).where(
                CreditTransaction.user_id == alice.user.id, CreditTransaction.kind == "reserve"
            )
        ).all()
    assert len(reserves) == 1


def test_the_run_list_pages_by_cursor_newest_first_and_filters_by_status(api):
    alice = api.account(credits=100)
    ids = [_start(alice.client).json()["workflowId"] for _ in range(3)]
    for workflow_id in ids:
        _ended(alice.client, workflow_id)
    first = alice.client.get("/api/workflows", params={"limit": 2}).json()
    second = alice.client.get(
        "/api/workflows", params={"limit": 2, "cursor": first["nextCursor"]}
    ).json()
    assert second["nextCursor"] is None
    assert [r["workflowId"] for r in first["items"] + second["items"]] == ids[::-1]
    completed = alice.client.get("/api/workflows", params={"status": "completed"}).json()
    assert len(completed["items"]) == 3
    failed = alice.client.get("/api/workflows", params={"status": "failed"}).json()
    assert failed["items"] == []
    bad = _is_problem(alice.client.get("/api/workflows", params={"cursor": "nonsense"}), 422)
    assert bad["errors"][0]["field"] == "cursor"


def test_health_names_the_checks_to_anyone_and_details_them_to_admins(api):
    anonymous = api.client().get("/api/workflow/health")
    assert anonymous.status_code == 200 and anonymous.json()["ok"] is True
    assert all(c["detail"] is None for c in anonymous.json()["checks"])
    admin = api.account(role=Role.ADMIN)
    detailed = admin.client.get("/api/workflow/health").json()
    assert {c["name"] for c in detailed["checks"]} >= {"database", "storage probe"}
    assert all(c["detail"] for c in detailed["checks"])


def test_a_fault_inside_the_server_is_a_generic_500_problem_that_leaks_nothing(api):
    alice = api.account()
    status = _ended(alice.client, _start(alice.client).json()["workflowId"])
    video = next(a for a in status["assets"] if a["kind"] == "video")
    with api.db.read() as session:
        key = session.execute(select(Asset.storage_key).where(Asset.kind == "video")).scalar_one()
    (api.data_dir / "storage" / key).unlink()  # the stored file is gone behind the API's back
    problem = _is_problem(alice.client.get(video["url"]), 500)
    assert problem["title"] == "Internal server error"
    leaks = ("Traceback", "FileNotFoundError", str(api.data_dir), key)
    assert not any(leak in str(problem) for leak in leaks)
    assert alice.client.get("/api/me").status_code == 200  # and the server carries on


def test_an_unknown_path_is_a_problem_too(api):
    _is_problem(api.client().get("/api/nothing-here"), 404)


def test_the_served_openapi_document_gives_every_error_the_problem_shape(api):
    anonymous = api.client()
    document = anonymous.get("/openapi.json").json()
    errors = [
        answer
        for operations in document["paths"].values()
        for operation in operations.values()
        for code, answer in operation["responses"].items()
        if code.startswith("4")
    ]
    assert errors
    for answer in errors:
        schema = answer["content"]["application/problem+json"]["schema"]
        assert schema["$ref"] == "#/components/schemas/Problem"
    start = document["paths"]["/api/workflow/start"]["post"]
    assert "idempotency-key" in {p["name"].lower() for p in start["parameters"]}
    assert anonymous.get("/docs").status_code == 200
