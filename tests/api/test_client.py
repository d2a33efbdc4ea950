"""core.client against the real server: every call, and errors as ApiError with the problem."""

from __future__ import annotations

import pytest

from core.client import ReelforgeClient
from core.errors import ApiError
from tests.api.test_workflows_api import BODY


def test_the_client_starts_waits_lists_and_raises_the_servers_problems(api):
    alice = api.account()
    options = {"image_config": BODY["imageConfig"], "video_config": BODY["videoConfig"]}
    with ReelforgeClient(api.url, alice.token) as client:
        run = client.start(BODY["imagePrompt"], BODY["videoPrompt"], **options)
        workflow_id = run["workflowId"]
        ended = client.wait(workflow_id, timeout_s=60)
        assert ended["status"] == "completed" and ended["workflowId"] == workflow_id
        assert [r["workflowId"] for r in client.runs(status=["completed"])] == [workflow_id]
        assert list(client.runs(status=["failed"])) == []

        with pytest.raises(ApiError) as ended_already:
            client.cancel(workflow_id)
        assert ended_already.value.status == 409
        with pytest.raises(ApiError) as invalid:
            client.start(" ", BODY["videoPrompt"])
        assert invalid.value.status == 422
        assert [e["field"] for e in invalid.value.problem["errors"]] == ["imagePrompt"]
    with ReelforgeClient(api.url, "not-a-token") as stranger, pytest.raises(ApiError) as denied:
        stranger.status(workflow_id)
    assert denied.value.status == 401 and denied.value.problem["title"] == "Unauthorized"
