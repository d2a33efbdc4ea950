"""Budget alerts by email, when SMTP_URL is set.

The alerts themselves are rows the reservation that crossed a threshold wrote (core.budgets);
this background sender mails them afterwards, so no start ever waits on a mail server or holds
its locks while one answers. Each alert is claimed (`emailed_at` set where it was NULL) in its
own transaction before it is sent, so two processes never both send it; a failed send gives the
claim back for the next pass, and a process that dies between claim and send loses that one
email (the inbox entry is unaffected).
"""

from __future__ import annotations

import logging
import smtplib
import threading
from email.message import EmailMessage
from urllib.parse import unquote, urlsplit

from sqlalchemy import select, update

from core import budgets
from core.clock import utcnow
from core.db import Database
from core.models import BudgetAlert, User, Workflow

log = logging.getLogger(__name__)

BATCH = 50


class AlertMailer:
    """Sends unsent budget alerts every `interval_s`, or at once when nudged."""

    def __init__(self, db: Database, smtp_url: str, *, sender: str, interval_s: float) -> None:
        parts = urlsplit(smtp_url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError("SMTP_URL must look like smtp://host:port")
        self.db, self.sender, self.interval_s = db, sender, interval_s
        self._tls = parts.scheme == "smtps"
        self._host, self._port = parts.hostname, parts.port or (465 if self._tls else 25)
        self._login = (
            (unquote(parts.username), unquote(parts.password or "")) if parts.username else None
        )
        self._wake, self._stop = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="alert-mailer", daemon=True)
        self._thread.start()

    def nudge(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.send_pending()
            except Exception:  # noqa: BLE001 - a database hiccup must not end the sender
                log.exception("Alert mailer - a pass failed; trying again")
            self._wake.wait(self.interval_s)
            self._wake.clear()

    def send_pending(self) -> int:
        """One pass: send every unsent alert. Returns how many were sent."""
        with self.db.read() as session:
            pending = list(
                session.execute(
                    select(BudgetAlert.id)
                    .where(BudgetAlert.emailed_at.is_(None))
                    .order_by(BudgetAlert.id)
                    .limit(BATCH)
                ).scalars()
            )
        sent = 0
        for alert_id in pending:
            message = self._claim(alert_id)
            if message is None:
                continue  # another process took it
            try:
                self._send(message)
            except (OSError, smtplib.SMTPException):
                log.warning("Alert mailer - alert %s not sent; retrying later", alert_id)
                self._unclaim(alert_id)
                break
            sent += 1
        return sent

    def _claim(self, alert_id: int) -> EmailMessage | None:
        with self.db.begin() as session:
            claimed = session.execute(
                update(BudgetAlert)
                .where(BudgetAlert.id == alert_id, BudgetAlert.emailed_at.is_(None))
                .values(emailed_at=utcnow()),
                execution_options={"synchronize_session": False},
            ).rowcount
            return compose(session, alert_id, self.sender) if claimed else None

    def _unclaim(self, alert_id: int) -> None:
        with self.db.begin() as session:
            session.execute(
                update(BudgetAlert).where(BudgetAlert.id == alert_id).values(emailed_at=None),
                execution_options={"synchronize_session": False},
            )

    def _send(self, message: EmailMessage) -> None:
        smtp = smtplib.SMTP_SSL if self._tls else smtplib.SMTP
        with smtp(self._host, self._port, timeout=30) as client:
            if self._login is not None:
                client.login(*self._login)
            client.send_message(message)


def compose(session, alert_id: int, sender: str) -> EmailMessage:
    """The email of one alert, to the same people its inbox entries went to."""
    alert = session.get_one(BudgetAlert, alert_id)
    scope = budgets.Scope.from_key(alert.scope_key)
    run_user = session.execute(
        select(Workflow.user_id).where(Workflow.id == alert.workflow_id)
    ).scalar_one()
    recipients = budgets.alert_recipients(session, scope, run_user)
    emails = list(session.execute(select(User.email).where(User.id.in_(recipients))).scalars())
    period = budgets.period_of(budgets.month_start(alert.period))
    message = EmailMessage()
    message["Subject"] = budgets.alert_title(alert.threshold, budgets.scope_name(session, scope))
    message["From"] = sender
    message["To"] = ", ".join(sorted(emails))
    message.set_content(
        f"{budgets.alert_body(alert.monthly_limit, alert.spent, period)}\n\n"
        f"The run that crossed it: {alert.workflow_id}\n"
    )
    return message
