"""Signing in: the first admin on a fresh install, password sign-in with throttling, and the
local account behind an OIDC identity (st.login)."""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core import auth
from core.auth import Role, UserView
from core.config import Settings
from core.db import Database
from core.errors import RequestValidationError
from core.models import User
from core.schemas import DISPLAY_NAME_MAX_CHARS, text_problem

log = logging.getLogger(__name__)

DEFAULT_ADMIN_EMAIL = "admin@localhost"


@dataclass(frozen=True)
class BootstrapResult:
    email: str
    generated_password: str | None  # set when no ADMIN_PASSWORD was given; shown once
    problem: str | None = None  # why no admin could be created (bad ADMIN_* settings)


def needs_admin(session: Session) -> bool:
    """True until an active admin exists: a fresh install, or one where only the CLI's operator
    account was ever made (it has no password and nobody can sign in as it)."""
    return (
        session.execute(
            select(User.id).where(User.role == Role.ADMIN.value, User.is_active.is_(True))
        ).first()
        is None
    )


def bootstrap_admin(db: Database, settings: Settings) -> BootstrapResult | None:
    """Create the first admin from ADMIN_EMAIL / ADMIN_PASSWORD, or with a generated password
    (as Airflow's standalone mode does). None when an admin already exists. Safe to race: the
    unique email makes a second process's attempt fail, and that is reported as "exists"."""
    email = settings.admin_email or DEFAULT_ADMIN_EMAIL
    given = settings.admin_password.get_secret_value() if settings.admin_password else None
    password = given or secrets.token_urlsafe(12)
    with db.begin() as session:
        if not needs_admin(session):
            return None
        try:
            user = auth.create_user(
                session,
                email,
                password=password,
                role=Role.ADMIN,
                starting_credits=settings.starting_credits,
            )
        except RequestValidationError as exc:
            problem = "; ".join(f"ADMIN_{k.upper()} {v}" for k, v in exc.problems.items())
            log.error("Accounts - no first admin created: %s", problem)
            return BootstrapResult(email=email, generated_password=None, problem=problem)
    log.warning("Accounts - created the first admin account %s", user.email)
    return BootstrapResult(email=user.email, generated_password=None if given else password)


def admin_banner(result: BootstrapResult) -> str:
    """The lines printed once in the terminal for a generated admin password."""
    rule = "=" * 64
    return "\n".join(
        [
            rule,
            "Reelforge: created the first admin account",
            f"  email:    {result.email}",
            f"  password: {result.generated_password}",
            "This password is shown only now. Set ADMIN_EMAIL / ADMIN_PASSWORD to choose your own,",
            "or make more accounts with: python -m core users create EMAIL [--admin]",
            rule,
        ]
    )


# ---------------------------------------------------------------------------------------------
# Password sign-in


class LoginThrottle:
    """Per-account lockout after repeated failures: `max_failures` in a row lock the email for
    `lockout_s`, doubling with each further lockout up to `max_lockout_s`. In memory, per process
    (one Streamlit server); unknown emails are throttled the same way, so it reveals nothing."""

    def __init__(
        self,
        *,
        max_failures: int = 5,
        lockout_s: float = 30.0,
        max_lockout_s: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.lockout_s = lockout_s
        self.max_lockout_s = max_lockout_s
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: dict[str, int] = {}
        self._lockouts: dict[str, int] = {}
        self._locked_until: dict[str, float] = {}

    def retry_after_s(self, email: str) -> float:
        """Seconds until `email` may try again (0 when it may now)."""
        with self._lock:
            return max(0.0, self._locked_until.get(_key(email), 0.0) - self._clock())

    def failed(self, email: str) -> None:
        key = _key(email)
        with self._lock:
            failures = self._failures.get(key, 0) + 1
            if failures < self.max_failures:
                self._failures[key] = failures
                return
            lockouts = self._lockouts.get(key, 0)
            wait = min(self.lockout_s * 2**lockouts, self.max_lockout_s)
            self._lockouts[key] = lockouts + 1
            self._failures[key] = 0
            self._locked_until[key] = self._clock() + wait
        log.warning("Accounts - %s locked for %.0f s after repeated failed sign-ins", key, wait)

    def succeeded(self, email: str) -> None:
        key = _key(email)
        with self._lock:
            self._failures.pop(key, None)
            self._lockouts.pop(key, None)
            self._locked_until.pop(key, None)


def _key(email: str) -> str:
    return email.strip().lower()


@dataclass(frozen=True)
class SignIn:
    user: UserView | None
    retry_after_s: float = 0.0  # > 0 when the account is locked for now

    @property
    def throttled(self) -> bool:
        return self.retry_after_s > 0


def sign_in(db: Database, throttle: LoginThrottle, email: str, password: str) -> SignIn:
    """Check a password. A locked account is refused without checking the password."""
    wait = throttle.retry_after_s(email)
    if wait > 0:
        return SignIn(None, wait)
    if not email.strip() or not password:
        return SignIn(None)
    with db.read() as session:
        user = auth.authenticate(session, email, password)
    if user is None:
        throttle.failed(email)
        return SignIn(None, throttle.retry_after_s(email))
    throttle.succeeded(email)
    log.info("Accounts - %s signed in", user.email)
    return SignIn(user)


# ---------------------------------------------------------------------------------------------
# OIDC (st.login)


def account_for_identity(
    db: Database, settings: Settings, email: str | None, name: str | None = None
) -> UserView | None:
    """The local account of an OIDC identity, created (role user, starting credits) on its first
    sign-in. None when the identity has no usable email or its account is deactivated."""
    if not email:
        return None
    try:
        normalized = auth.normalize_email(email)
    except RequestValidationError:
        return None
    try:
        with db.begin() as session:
            user = auth.find_user(session, normalized)
            if user is None:
                created = auth.create_user(
                    session, normalized, starting_credits=settings.starting_credits
                )
                row = session.get(User, created.id)
                # A name the identity provider sends with control characters is left out.
                if name and row is not None and text_problem(name) is None:
                    row.display_name = name.strip()[:DISPLAY_NAME_MAX_CHARS]
                user = auth.get_user(session, created.id)
                log.info("Accounts - created %s on its first OIDC sign-in", normalized)
    except (RequestValidationError, IntegrityError):
        # Another tab of the same person created the account first: use that one.
        with db.read() as session:
            user = auth.find_user(session, normalized)
    return user if user is not None and user.is_active else None
