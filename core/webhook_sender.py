"""The delivery loop: one thread per process that runs runs, sending the outbox's due messages.

Each pass claims a batch (core.webhooks.claim_due), sends each message signed at send time, and
records the attempt. A failed attempt is not waited for in a sleeping thread: tenacity's
exponential wait only computes when the row is due again, for up to WEBHOOK_MAX_AGE_S.
"""

from __future__ import annotations

import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
from tenacity import RetryCallState, wait_exponential, wait_random

from core import webhooks
from core.clock import utcnow
from core.config import Settings
from core.db import Database
from core.providers.retry_after import retry_after_s
from core.webhooks import Attempt, Claimed, Scope, UnsafeDestinationError

log = logging.getLogger(__name__)

BATCH = 16
SENDERS = 4
# Longer than a batch takes in the worst case (BATCH / SENDERS attempts of WEBHOOK_TIMEOUT_S
# each), so a live sender's rows are never taken by another.
LEASE_PADDING_S = 60.0


class WebhookSender:
    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        initial = settings.webhook_retry_initial_wait_s
        # Exponential with jitter, as Standard Webhooks recommends: initial, 2x, 4x... up to
        # the cap, plus up to `initial` at random so retries after an outage spread out.
        self._wait = wait_exponential(
            multiplier=initial, max=settings.webhook_retry_max_wait_s
        ) + wait_random(0, initial)
        self._lease_s = BATCH / SENDERS * settings.webhook_timeout_s + LEASE_PADDING_S
        # No redirects (a redirect could lead anywhere) and no proxies from the environment
        # (they would connect somewhere other than the address checked).
        self._client = httpx.Client(
            timeout=settings.webhook_timeout_s, follow_redirects=False, trust_env=False
        )
        self._pool = ThreadPoolExecutor(SENDERS, thread_name_prefix="reelforge-webhook")
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._loop, name="reelforge-webhooks", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=self.settings.webhook_timeout_s + 5)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    def _loop(self) -> None:
        while not self._stopping.wait(self.settings.webhook_poll_interval_s):
            try:
                while self.deliver_due() == BATCH and not self._stopping.is_set():
                    pass  # a full batch: more may be due
            except Exception:  # noqa: BLE001 - a database blip must not stop deliveries
                log.exception("Webhooks - delivery pass failed; retrying at the next poll")

    def deliver_due(self) -> int:
        """One pass: claim a batch of due messages, send them, record each attempt. Returns
        how many were claimed."""
        with self.db.read() as session:
            if not webhooks.any_due(session):
                return 0
        with self.db.begin() as session:
            claimed = webhooks.claim_due(session, lease_s=self._lease_s, limit=BATCH)
        list(self._pool.map(self._deliver, claimed))
        return len(claimed)

    def _deliver(self, claimed: Claimed) -> None:
        with self.db.begin() as session:
            if claimed.scope is Scope.RUN:
                signing = webhooks.user_signing_secrets(session, claimed.user_id)
            else:
                configured = self.settings.webhook_secret
                secret = configured.get_secret_value() if configured else None
                signing = [webhooks.global_signing_secret(session, secret)]
        try:
            attempt = self._send(claimed, signing)
        except Exception as exc:  # noqa: BLE001 - recorded, so the message still ages out
            log.exception("Webhook %s - attempt failed inside the sender", claimed.id)
            attempt = Attempt(None, f"not sent: {type(exc).__name__}")
        now = utcnow()
        status, next_at = webhooks.after_attempt(
            attempt,
            created_at=claimed.created_at,
            now=now,
            wait_s=self._wait_s(claimed.attempt),
            max_age_s=self.settings.webhook_max_age_s,
        )
        with self.db.begin() as session:
            webhooks.record_attempt(session, claimed, attempt, status, next_at)
        log.info(
            "Webhook %s - attempt %d to %s: %s (%s)",
            claimed.id,
            claimed.attempt,
            claimed.url,
            attempt.status_code or attempt.error,
            status,
        )

    def _wait_s(self, attempt_number: int) -> float:
        state = RetryCallState(None, None, (), {})  # type: ignore[arg-type]
        state.attempt_number = attempt_number
        return self._wait(state)

    def _send(self, claimed: Claimed, signing: list[str]) -> Attempt:
        """POST the message to an address its host resolves to now, checked by the same rule
        as at start (a run's URL only: WEBHOOK_URL is the operators' own), and connect to that
        very address: the Host header and TLS name stay the URL's."""
        url = httpx.URL(claimed.url)
        port = url.port or (443 if url.scheme == "https" else 80)
        allow_private = self.settings.allow_private_webhooks or claimed.scope is Scope.GLOBAL
        try:
            addresses = webhooks.resolve_destination(url.host, port, allow_private=allow_private)
        except UnsafeDestinationError as exc:
            return Attempt(None, f"not sent: {exc}")
        body = json.dumps(claimed.payload, separators=(",", ":")).encode()
        timestamp = int(utcnow().timestamp())
        headers = {
            **webhooks.signed_headers(signing, claimed.id, timestamp, body),
            "content-type": "application/json",
            "user-agent": "Reelforge-Webhooks/1",
            "host": url.netloc.decode(),
        }
        error = "no address"
        for address in addresses:  # e.g. localhost: ::1, then 127.0.0.1
            try:
                response = self._client.post(
                    url.copy_with(host=address),
                    content=body,
                    headers=headers,
                    extensions={"sni_hostname": url.host},
                )
            except httpx.ConnectError as exc:
                error = f"ConnectError: {exc}"
                continue
            except httpx.HTTPError as exc:
                return Attempt(None, f"{type(exc).__name__}: {exc}")
            return Attempt(response.status_code, retry_after_s=retry_after_s(response.headers))
        return Attempt(None, error)
