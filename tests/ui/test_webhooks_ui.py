"""Webhooks on the pages: the create page's optional webhook field (refused addresses named
inline, nothing charged), and the watch page's deliveries with Redeliver and the secret."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy import select

from core import workflows
from core.clock import utcnow
from core.models import WebhookDelivery, Workflow
from core.ui import nav
from tests.helpers import wait_for
from tests.local_http import local_server
from tests.ui.conftest import PAYLOAD, TEST_RUNNER, app_for, queued_run, refreshed, texts
from tests.ui.test_create import create_page, fill


def with_webhook(at, url: str, events: list[str]):
    at.text_input(key="create_webhook_url").input(url)
    at.multiselect(key="create_webhook_events").set_value(events)
    return at.run()


def test_a_malformed_webhook_url_is_named_inline_and_nothing_starts(engine, make_user, runtime):
    user = make_user()
    at = fill(create_page(user), "a red fox in fresh snow", "slow dolly in")
    at = with_webhook(at, "ftp://example.com/hooks", ["completed"])
    at.button(key="create_start").click().run()
    assert not at.exception
    assert "The webhook URL must start with http:// or https://" in texts(at)
    assert refreshed(runtime, user).balance == 100


def test_a_private_webhook_address_is_refused_at_start_with_nothing_charged(
    engine, make_user, runtime, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(runtime.settings, "allow_private_webhooks", False)
    user = make_user()
    at = fill(create_page(user), "a red fox in fresh snow", "slow dolly in")
    at = with_webhook(at, "http://127.0.0.1:9/hooks", ["completed"])
    at.button(key="create_start").click().run()
    assert not at.exception
    assert "The webhook URL points at 127.0.0.1, a loopback address" in texts(at)
    assert refreshed(runtime, user).balance == 100
    with runtime.db.read() as session:
        assert session.scalar(select(Workflow.id).where(Workflow.user_id == user.id)) is None


def test_the_watch_page_lists_deliveries_and_redelivers_one_with_its_id(engine, make_user, runtime):
    user = make_user()
    with local_server(lambda _: (200, {})) as receiver:
        payload = {**PAYLOAD, "webhookUrl": f"{receiver.url}/hooks", "webhookEvents": ["started"]}
        workflow_id = queued_run(runtime, user, payload)
        with runtime.db.begin() as session:
            long_ago = utcnow() - timedelta(hours=1)
            workflows.claim(session, workflow_id, TEST_RUNNER, stale_before=long_ago)

        def statuses() -> list[str]:
            with runtime.db.read() as session:
                return list(
                    session.scalars(
                        select(WebhookDelivery.status).where(
                            WebhookDelivery.workflow_id == workflow_id
                        )
                    )
                )

        wait_for(lambda: statuses() == ["delivered"])
        at = app_for(user, page=nav.WATCH.path, id=workflow_id)
        assert not at.exception
        assert "1 message, 1 delivered" in texts(at)
        assert "started" in at.dataframe[0].value["event"].tolist()
        at.button(key="watch_redeliver").click().run()
        assert not at.exception
        assert any("with the same webhook-id" in s.value for s in at.success)
        wait_for(lambda: len(receiver.requests) == 2 and statuses() == ["delivered"])
        ids = Counter(r.headers["webhook-id"] for r in receiver.requests)
    assert list(ids.values()) == [2]
    at.toggle(key="watch_webhook_secret_reveal").set_value(True).run()
    assert any(c.value.startswith("whsec_") for c in at.code)
