"""Budget alerts by email: a real SMTP server (aiosmtpd) receives each alert once, after the
reservation committed; while the server is down nothing is lost."""

from __future__ import annotations

from collections.abc import Iterator
from email import message_from_bytes
from email.policy import default

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select

from core import budgets
from core.alert_mail import AlertMailer
from core.auth import Role
from core.budgets import Scope, ScopeKind
from core.models import BudgetAlert
from core.schemas import parse_request
from core.workflows import start_workflow
from tests.helpers import free_port, wait_for

REQUEST = parse_request({"imagePrompt": "a fox", "videoPrompt": "dolly in"})


class Received:
    """aiosmtpd handler keeping every message it accepts."""

    def __init__(self) -> None:
        self.envelopes: list = []

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 - aiosmtpd's name
        self.envelopes.append(envelope)
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[Received, int]]:
    received, port = Received(), free_port()
    controller = Controller(received, hostname="127.0.0.1", port=port)
    controller.start()
    yield received, port
    controller.stop()


def cross_80_percent(db, make_user):
    """A user capped at one run and a bit, whose first run crosses 80%."""
    user = make_user(email="spender@example.com", credits=1000)
    make_user(email="boss@example.com", credits=0, role=Role.ADMIN)
    with db.begin() as session:
        budgets.set_budget(session, Scope(ScopeKind.USER, user.id), 20, actor="boss@example.com")
    start_workflow(db, user_id=user.id, request=REQUEST, client_key="k", actor=user.email)
    return user


def emailed(db) -> list:
    with db.read() as session:
        return list(session.execute(select(BudgetAlert.emailed_at)).scalars())


def test_an_alert_reaches_the_user_and_the_admins_by_email_once(db, make_user, smtp):
    received, port = smtp
    cross_80_percent(db, make_user)
    mailer = AlertMailer(db, f"smtp://127.0.0.1:{port}", sender="rf@example.com", interval_s=0.05)
    mailer.start()
    try:
        wait_for(lambda: len(received.envelopes) == 1)
        wait_for(lambda: all(emailed(db)))
        assert mailer.send_pending() == 0  # nothing is sent twice
    finally:
        mailer.stop()
    envelope = received.envelopes[0]
    assert sorted(envelope.rcpt_tos) == ["boss@example.com", "spender@example.com"]
    message = message_from_bytes(envelope.content, policy=default)
    assert message["Subject"].strip() == (
        "Budget alert: 80% of the monthly budget of spender@example.com is spent"
    )
    assert "19 of 20 credits spent" in message.get_content()
    assert len(received.envelopes) == 1


def test_while_the_mail_server_is_down_the_alert_waits(db, make_user):
    cross_80_percent(db, make_user)
    mailer = AlertMailer(
        db, f"smtp://127.0.0.1:{free_port()}", sender="rf@example.com", interval_s=1
    )
    assert mailer.send_pending() == 0
    assert emailed(db) == [None]  # given back, for the next pass
