"""The run list's filters over HTTP: project by id or name, a creation-time range, an admin's
view of everyone's runs (refused to others), each bad value a 422 naming its parameter, and the
cursor paging through a filtered list."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import update

from core.auth import Role
from core.models import Workflow
from core.projects import create_project
from tests.api.test_workflows_api import BODY, _is_problem, _start

LONG_AGO = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)


def _ids(client, **params) -> list[str]:
    answer = client.get("/api/workflows", params=params)
    assert answer.status_code == 200, answer.text
    return [r["workflowId"] for r in answer.json()["items"]]


def test_the_run_list_filters_by_project_time_and_owner(api):
    alice, bob = api.account(credits=200), api.account(credits=200)
    admin = api.account(role=Role.ADMIN)
    with api.db.begin() as session:
        posters = create_project(session, alice.user.id, "Posters")
    in_project = [
        _start(alice.client, {**BODY, "projectId": posters.id}).json()["workflowId"]
        for _ in range(2)
    ]
    old = _start(alice.client).json()["workflowId"]
    bobs = _start(bob.client).json()["workflowId"]
    with api.db.begin() as session:
        session.execute(update(Workflow).where(Workflow.id == old).values(created_at=LONG_AGO))

    newest_first = in_project[::-1]
    assert _ids(alice.client, projectId=posters.id) == newest_first
    assert _ids(alice.client, projectName="posters") == newest_first  # any case
    assert _ids(bob.client, projectName="Posters") == []  # alice's project, not his
    page = alice.client.get("/api/workflows", params={"projectName": "Posters", "limit": 1})
    rest = _ids(alice.client, projectName="Posters", limit=1, cursor=page.json()["nextCursor"])
    assert [page.json()["items"][0]["workflowId"], *rest] == newest_first

    day = timedelta(days=1)
    assert _ids(alice.client, createdBefore=(LONG_AGO + day).isoformat()) == [old]
    assert _ids(alice.client, createdAfter="2026-01-15T12:00:00") == [*newest_first, old]
    an_hour_later_in_paris = "2026-01-15T14:00:00+01:00"
    assert _ids(alice.client, createdAfter=an_hour_later_in_paris) == newest_first

    assert set(_ids(admin.client, all="true")) >= {*in_project, old, bobs}
    assert _ids(admin.client, user=bob.user.email) == [bobs]
    assert _ids(admin.client) == []  # without asking, an admin's list is their own
    for params in ({"all": "true"}, {"user": alice.user.email}):
        _is_problem(bob.client.get("/api/workflows", params=params), 403)


def test_bad_filter_values_are_a_422_naming_the_parameter(api):
    alice, admin = api.account(), api.account(role=Role.ADMIN)
    bad = [
        ("createdAfter", "yesterday"),
        ("createdAfter", "1764504000"),  # seconds since 1970 are not ISO 8601
        ("createdBefore", "2026-13-01T00:00:00Z"),
        ("projectId", "posters"),
        ("status", "finished"),
        ("stauts", "failed"),  # a typo must not answer with an unfiltered list
        ("projectName", "Posters\x00"),  # Postgres takes no NUL in a string
        ("cursor", "WyIyMDI2LTExLTMwVDAwOjAwOjAwKzAwOjAwIiwgImFcdTAwMDAiXQ"),  # its id has one
    ]
    for name, value in bad:
        problem = _is_problem(alice.client.get("/api/workflows", params={name: value}), 422)
        # (a list parameter names the item too: status.0)
        assert [e["field"].split(".")[0] for e in problem["errors"]] == [name]
    backwards = {"createdAfter": "2026-11-02T00:00:00Z", "createdBefore": "2026-11-01T00:00:00Z"}
    problem = _is_problem(alice.client.get("/api/workflows", params=backwards), 422)
    assert problem["errors"][0]["field"] == "createdBefore"
    twice = alice.client.get("/api/workflows", params=[("projectName", "a"), ("projectName", "b")])
    assert _is_problem(twice, 422)["errors"][0]["field"] == "projectName"
    both = alice.client.get("/api/workflows", params=[("status", "queued"), ("status", "failed")])
    assert both.status_code == 200  # status takes several
    nul_id = _is_problem(alice.client.get("/api/workflow/a%00b/status"), 422)
    assert nul_id["errors"][0]["field"] == "workflow_id"
    nobody = admin.client.get("/api/workflows", params={"user": "nobody@example.com"})
    assert _is_problem(nobody, 422)["errors"][0]["field"] == "user"
