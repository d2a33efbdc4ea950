"""Webhooks: the outbox written with each state change, Standard Webhooks signatures checked by
the reference implementation, the delivery loop against a real local receiver that is down and
then up, leases that survive a crashed sender, the event filter, and where a webhook may go."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr
from sqlalchemy import select, text, update
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from core import launch, webhooks, workflows
from core.auth import create_user
from core.clock import utcnow
from core.config import Settings
from core.db import Database
from core.errors import FailureCategory, RequestValidationError
from core.models import WebhookDelivery, Workflow
from core.runtime import Runtime
from core.schemas import parse_request
from core.states import STEP_ORDER, StepName, WorkflowStatus
from core.webhook_sender import WebhookSender
from core.webhooks import Attempt, DeliveryStatus
from tests import stepping
from tests.helpers import ParkedExecutor, balance, free_port, load, wait_for
from tests.local_http import local_server

PAYLOAD = {
    "imagePrompt": "a kite over the dunes",
    "videoPrompt": "slow tilt up",
    "imageConfig": {"size": "1024x1024"},
    "videoConfig": {"duration": "4s", "generateAudio": False},
}
GLOBAL_SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # 24 bytes, base64
# A started run: started, each of six steps started and done, the end.
EVENTS_OF_A_COMPLETED_RUN = ["started"] + ["step"] * 12 + ["completed"]


def request(url: str | None = None, events: list[str] | None = None):
    extra = {"webhookUrl": url} if url else {}
    if events is not None:
        extra["webhookEvents"] = events
    return parse_request({**PAYLOAD, **extra})


def deliveries(runtime: Runtime, workflow_id: str) -> list[WebhookDelivery]:
    with runtime.db.read() as session:
        return list(
            session.scalars(
                select(WebhookDelivery)
                .where(WebhookDelivery.workflow_id == workflow_id)
                .order_by(WebhookDelivery.created_at, WebhookDelivery.id)
            )
        )


@pytest.fixture
def hooked(settings: Settings) -> Settings:
    """Fast retries, a fast loop, and local receivers allowed (as in every test)."""
    return settings.model_copy(
        update={
            "allow_private_webhooks": True,
            "webhook_poll_interval_s": 0.02,
            "webhook_retry_initial_wait_s": 0.05,
            "webhook_retry_max_wait_s": 0.2,
        }
    )


# -- pure decisions -----------------------------------------------------------------------------

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("attempt", "status", "next_in_s"),
    [
        (Attempt(200), DeliveryStatus.DELIVERED, 0),
        (Attempt(204), DeliveryStatus.DELIVERED, 0),
        (Attempt(410), DeliveryStatus.FAILED, 0),  # the receiver asked us to stop
        (Attempt(500), DeliveryStatus.PENDING, 30),
        (Attempt(302), DeliveryStatus.PENDING, 30),  # redirects are not followed
        (Attempt(None, "ConnectError"), DeliveryStatus.PENDING, 30),
        (Attempt(429, retry_after_s=120), DeliveryStatus.PENDING, 120),
        (Attempt(503, retry_after_s=5), DeliveryStatus.PENDING, 30),
    ],
)
def test_an_attempt_decides_the_status_and_the_next_try(attempt, status, next_in_s):
    decided = webhooks.after_attempt(attempt, created_at=T0, now=T0, wait_s=30, max_age_s=86400)
    assert decided == (status, T0 + timedelta(seconds=next_in_s))


def test_a_message_whose_next_try_would_pass_its_age_limit_fails():
    now = T0 + timedelta(hours=23, minutes=59)
    decided = webhooks.after_attempt(
        Attempt(500), created_at=T0, now=now, wait_s=120, max_age_s=86400
    )
    assert decided == (DeliveryStatus.FAILED, now)


def test_signatures_verify_with_the_reference_implementation_during_a_rotation():
    old, new = webhooks.new_secret(), webhooks.new_secret()
    body = b'{"type":"workflow.completed","data":{"workflowId":"abc"}}'
    timestamp = int(utcnow().timestamp())
    headers = webhooks.signed_headers([new, old], "msg_1", timestamp, body)
    assert headers["webhook-signature"].count("v1,") == 2
    for secret in (new, old):
        assert Webhook(secret).verify(body, headers)["data"] == {"workflowId": "abc"}
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook(webhooks.new_secret()).verify(body, headers)


# -- where a webhook may go -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://127.0.0.1:9/hook", "loopback"),
        ("http://localhost/hook", "loopback"),
        ("https://10.1.2.3/hook", "private"),
        ("http://192.168.0.10/hook", "private"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://[::1]/hook", "loopback"),
        ("http://[::ffff:127.0.0.1]/hook", "loopback"),
        ("http://0.0.0.0/hook", "unspecified"),
        ("http://240.0.0.1/hook", "reserved"),
    ],
)
def test_a_webhook_to_a_non_public_address_is_refused_naming_the_field(url, kind):
    with pytest.raises(RequestValidationError) as refused:
        webhooks.check_webhook_url(url, allow_private=False)
    assert list(refused.value.problems) == ["webhookUrl"]
    assert f"a {kind} address" in refused.value.problems["webhookUrl"]
    webhooks.check_webhook_url(url, allow_private=True)  # ALLOW_PRIVATE_WEBHOOKS=1


def test_a_webhook_host_that_does_not_resolve_is_refused():
    with pytest.raises(RequestValidationError) as refused:
        webhooks.check_webhook_url("https://no-such-host.invalid/hook", allow_private=False)
    assert "no-such-host.invalid does not resolve" in refused.value.problems["webhookUrl"]


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://example.com/hook", "must start with http:// or https://"),
        ("https://user:pw@example.com/hook", "must not carry a user name or password"),
        ("not a url", "must start with http:// or https://"),
    ],
)
def test_a_webhook_url_of_the_wrong_shape_is_refused_at_the_edge(url, problem):
    with pytest.raises(RequestValidationError) as refused:
        request(url)
    assert refused.value.problems == {"webhookUrl": problem}


def test_a_refused_webhook_starts_nothing_and_charges_nothing(runtime, make_user):
    user = make_user(credits=100)
    with pytest.raises(RequestValidationError) as refused:
        runtime.start_workflow(user, request("http://127.0.0.1:9/hook"))
    assert "loopback" in refused.value.problems["webhookUrl"]
    assert balance(runtime, user) == 100
    with runtime.db.read() as session:
        assert session.scalar(select(Workflow.id).where(Workflow.user_id == user.id)) is None


# -- the outbox -------------------------------------------------------------------------------


def queued(runtime: Runtime, user, req) -> str:
    workflow_id = workflows.start_workflow(
        runtime.db, user_id=user.id, request=req, client_key=uuid.uuid4().hex, actor=user.email
    ).workflow_id
    return workflow_id


def complete_by_hand(db: Database, workflow_id: str, runner: str = "runner-a") -> None:
    """Every state change of a run that completes, through the write paths the orchestrator
    uses (without making a video: that is the orchestrator tests' business)."""
    with db.begin() as session:
        assert workflows.claim(session, workflow_id, runner, stale_before=utcnow())
    for step in STEP_ORDER:
        with db.begin() as session:
            stepping.start_step(session, workflow_id, step, runner, deadline_at=utcnow())
            stepping.complete_step(session, workflow_id, step, runner, {})
    with db.begin() as session:
        workflows.complete_run(session, workflow_id, runner)


def test_the_outbox_row_commits_or_rolls_back_with_its_state_change(runtime, make_user):
    workflow_id = queued(runtime, make_user(), request("http://receiver.test/hook"))
    long_ago = utcnow() - timedelta(hours=1)
    with pytest.raises(RuntimeError), runtime.db.begin() as session:
        assert workflows.claim(session, workflow_id, "runner-a", stale_before=long_ago)
        assert len(session.scalars(select(WebhookDelivery)).all()) == 1  # written, in here
        raise RuntimeError("the transaction fails after the state change")
    assert load(runtime, workflow_id).status is WorkflowStatus.QUEUED
    assert deliveries(runtime, workflow_id) == []
    with runtime.db.begin() as session:
        assert workflows.claim(session, workflow_id, "runner-a", stale_before=long_ago)
    assert load(runtime, workflow_id).status is WorkflowStatus.RUNNING
    [started] = deliveries(runtime, workflow_id)
    assert (started.event, started.status, started.payload["type"]) == (
        "started",
        "pending",
        "workflow.started",
    )


def test_a_crashed_senders_claim_expires_and_its_late_result_is_ignored(runtime, make_user):
    workflow_id = queued(runtime, make_user(), request("http://receiver.test/hook"))
    with runtime.db.begin() as session:
        workflows.claim(session, workflow_id, "runner-a", stale_before=utcnow())
    with runtime.db.begin() as session:
        [first] = webhooks.claim_due(session, lease_s=3600, limit=10)
    with runtime.db.begin() as session:  # the sender "crashed": nothing is due while leased
        assert webhooks.claim_due(session, lease_s=3600, limit=10) == []
        session.execute(update(WebhookDelivery).values(next_attempt_at=utcnow()))  # lease over
    with runtime.db.begin() as session:
        [second] = webhooks.claim_due(session, lease_s=3600, limit=10)
    assert (second.id, second.attempt) == (first.id, 2)
    with runtime.db.begin() as session:
        late = webhooks.record_attempt(
            session, first, Attempt(200), DeliveryStatus.DELIVERED, utcnow()
        )
        current = webhooks.record_attempt(
            session, second, Attempt(200), DeliveryStatus.DELIVERED, utcnow()
        )
    assert (late, current) == (False, True)
    [row] = deliveries(runtime, workflow_id)
    assert (row.status, row.attempts, row.last_status_code) == ("delivered", 2, 200)


def test_two_senders_claiming_at_once_on_postgres_take_different_messages(postgres_only_url):
    db = Database.from_url(postgres_only_url)
    try:
        with db.begin() as session:
            user = create_user(session, "senders@example.com", starting_credits=100)
        workflow_id = workflows.start_workflow(
            db,
            user_id=user.id,
            request=request("http://receiver.test/hook", ["step"]),
            client_key="k",
            actor=user.email,
        ).workflow_id
        complete_by_hand(db, workflow_id)
        with db.begin() as first:
            mine = webhooks.claim_due(first, lease_s=60, limit=5)  # locked until this commits
            with db.begin() as second:
                # Without SKIP LOCKED this would wait on the first claim's rows: fail instead.
                second.execute(text("SET LOCAL lock_timeout = '2s'"))
                theirs = webhooks.claim_due(second, lease_s=60, limit=100)
    finally:
        db.dispose()
    assert (len(mine), len(theirs)) == (5, 7)  # twelve step events in all
    assert not {c.id for c in mine} & {c.id for c in theirs}


def test_the_event_filter_picks_the_runs_events_and_the_global_url_hears_all(hooked, make_user):
    """A real run through the orchestrator: its state changes are the ones that enqueue."""
    settings = hooked.model_copy(update={"webhook_url": "http://operators.test/all"})
    runtime = Runtime(settings, upgrade=False, executor=ParkedExecutor())
    try:
        user = make_user()
        only_end, _ = runtime.start_workflow(
            user, request("http://receiver.test/end", ["completed"])
        )
        complete_by_hand(runtime.db, only_end)
        rows = deliveries(runtime, only_end)
    finally:
        runtime.shutdown()
    assert load(runtime, only_end).status is WorkflowStatus.COMPLETED
    own = [r for r in rows if r.scope == "run"]
    assert [(r.event, r.payload["data"]["status"]) for r in own] == [("completed", "completed")]
    assert [r.event for r in rows if r.scope == "global"] == EVENTS_OF_A_COMPLETED_RUN


def test_a_failed_run_tells_which_step_failed_and_what_came_back(runtime, make_user):
    user = make_user(credits=100)
    workflow_id = queued(runtime, user, request("http://receiver.test/hook"))
    with runtime.db.begin() as session:
        workflows.claim(session, workflow_id, "runner-a", stale_before=utcnow())
        stepping.start_step(
            session, workflow_id, StepName.VALIDATE, "runner-a", deadline_at=utcnow()
        )
        workflows.end_run(
            session,
            workflow_id,
            "runner-a",
            WorkflowStatus.FAILED,
            message="moderation refused the prompt",
            category=FailureCategory.MODERATION,
        )
    *_, step_end, end = [r.payload["data"] for r in deliveries(runtime, workflow_id)]
    assert step_end == {"workflowId": workflow_id, "step": "validate", "state": "failed"}
    assert end["status"] == "failed"
    assert end["error"] == {
        "code": "moderation",
        "message": "moderation refused the prompt",
        "step": "validate",
    }
    assert end["refundedCredits"] > 0


# -- delivery to a real receiver ----------------------------------------------------------------


def test_a_receiver_down_for_a_while_then_up_gets_each_event_once_signed(hooked, make_user):
    port = free_port()
    settings = hooked.model_copy(
        update={
            "webhook_url": f"http://127.0.0.1:{port}/all",
            "webhook_secret": SecretStr(GLOBAL_SECRET),
        }
    )
    runtime = Runtime(settings, upgrade=False, executor=ParkedExecutor())
    try:
        user = make_user()
        workflow_id, _ = runtime.start_workflow(user, request(f"http://127.0.0.1:{port}/run"))
        complete_by_hand(runtime.db, workflow_id)
        runtime.webhooks.start()
        # Down: nothing listens on the port, so every attempt fails and is tried again.
        wait_for(lambda: min(r.attempts for r in deliveries(runtime, workflow_id)) >= 2)
        assert {r.status for r in deliveries(runtime, workflow_id)} == {"pending"}
        with local_server(lambda _: (204, {}), port=port) as receiver:
            wait_for(lambda: {r.status for r in deliveries(runtime, workflow_id)} == {"delivered"})
            received = list(receiver.requests)
        with runtime.db.begin() as session:
            user_secret = webhooks.signing_secret(session, user.id)
    finally:
        runtime.shutdown()
    rows = deliveries(runtime, workflow_id)
    assert Counter(r.headers["webhook-id"] for r in received) == Counter(r.id for r in rows)
    assert all(n == 1 for n in Counter(r.headers["webhook-id"] for r in received).values())
    by_path: dict[str, list[str]] = {"/run": [], "/all": []}
    for r in received:
        secret = user_secret if r.path == "/run" else GLOBAL_SECRET
        payload = Webhook(secret).verify(r.body, r.headers)
        assert payload == json.loads(r.body)
        by_path[r.path].append(payload["type"].removeprefix("workflow."))
    ordered = sorted(EVENTS_OF_A_COMPLETED_RUN)
    assert sorted(by_path["/run"]) == sorted(by_path["/all"]) == ordered
    assert all(r.attempts >= 2 for r in rows)  # refused while down, taken when up


def test_the_address_is_checked_again_at_delivery_and_the_host_kept(hooked, make_user):
    """A run's URL that reaches a private address by the time it is sent (DNS rebinding, or a
    rule tightened since) is not sent; an allowed one is sent to the very address checked,
    under its own Host name."""
    with local_server(lambda _: (200, {})) as receiver:
        port = receiver.url.rsplit(":", 1)[1]
        runtime = Runtime(hooked, upgrade=False, executor=ParkedExecutor())
        try:
            user = make_user()
            workflow_id, _ = runtime.start_workflow(
                user, request(f"http://localhost:{port}/run", ["started"])
            )
            with runtime.db.begin() as session:
                workflows.claim(session, workflow_id, "runner-a", stale_before=utcnow())
            strict = WebhookSender(
                runtime.db, hooked.model_copy(update={"allow_private_webhooks": False})
            )
            assert strict.deliver_due() == 1
            strict.stop()
            [refused] = deliveries(runtime, workflow_id)
            assert refused.status == "pending" and receiver.requests == []
            assert refused.last_error.startswith("not sent: points at ")
            assert "loopback address" in refused.last_error
            with runtime.db.begin() as session:
                session.execute(update(WebhookDelivery).values(next_attempt_at=utcnow()))
            assert runtime.webhooks.deliver_due() == 1
        finally:
            runtime.shutdown()
    [sent] = deliveries(runtime, workflow_id)
    assert (sent.status, sent.attempts, sent.last_status_code) == ("delivered", 2, 200)
    [received] = receiver.requests
    assert {k.lower(): v for k, v in received.headers.items()}["host"] == f"localhost:{port}"


# -- the create page's fields -----------------------------------------------------------------


def test_the_create_forms_webhook_fields_make_the_request_and_come_back_from_it():
    form = launch.FormFields(
        image_prompt="a kite",
        video_prompt="tilt up",
        webhook_url="https://hooks.example.com/reelforge",
        webhook_events=["completed", "started"],
    )
    req = parse_request(form.payload())
    assert (req.webhook_url, req.webhook_events) == (form.webhook_url, ("started", "completed"))
    copied, notices = launch.fields_from_request(req.to_json())
    assert (copied.webhook_url, copied.webhook_events, notices) == (
        form.webhook_url,
        ["started", "completed"],
        [],
    )
    assert launch.rerun_payload(req, same_owner=True)["webhookUrl"] == form.webhook_url
    assert launch.rerun_payload(req, same_owner=False)["webhookUrl"] is None
    assert "webhookUrl" not in launch.FormFields(image_prompt="a", video_prompt="b").payload()
