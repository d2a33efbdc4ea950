"""The first admin, password sign-in with throttling, and OIDC identities."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from core import accounts, auth
from core.auth import Role
from core.models import User


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_fresh_install_gets_an_admin_with_a_generated_password(db, settings):
    result = accounts.bootstrap_admin(db, settings)
    assert result.email == accounts.DEFAULT_ADMIN_EMAIL
    assert result.generated_password and len(result.generated_password) >= 12
    with db.read() as session:
        admin = auth.authenticate(session, result.email, result.generated_password)
    assert admin.role is Role.ADMIN and admin.balance == settings.starting_credits
    assert result.generated_password in accounts.admin_banner(result)
    assert accounts.bootstrap_admin(db, settings) is None  # only once


def test_the_admin_comes_from_admin_email_and_password_when_set(db, settings):
    settings = settings.model_copy(
        update={"admin_email": "Boss@Example.com", "admin_password": SecretStr("a-long-secret")}
    )
    result = accounts.bootstrap_admin(db, settings)
    assert result.email == "boss@example.com" and result.generated_password is None
    with db.read() as session:
        assert auth.authenticate(session, "boss@example.com", "a-long-secret") is not None


def test_a_too_short_admin_password_is_reported_not_raised(db, settings):
    settings = settings.model_copy(update={"admin_password": SecretStr("short")})
    result = accounts.bootstrap_admin(db, settings)
    assert result.problem == "ADMIN_PASSWORD must be at least 8 characters"


def test_an_install_with_only_the_cli_operator_still_gets_an_admin(db, settings, make_user):
    make_user(email=auth.OPERATOR_EMAIL)
    assert accounts.bootstrap_admin(db, settings) is not None


def test_sign_in_checks_the_password_and_locks_after_repeated_failures(db, make_user):
    user = make_user(password="right-password")
    clock = Clock()
    throttle = accounts.LoginThrottle(max_failures=3, lockout_s=10, clock=clock)
    assert accounts.sign_in(db, throttle, user.email, "right-password").user.id == user.id
    for _ in range(2):
        assert accounts.sign_in(db, throttle, user.email, "wrong").user is None
    locked = accounts.sign_in(db, throttle, user.email.upper(), "wrong")
    assert locked.throttled and locked.retry_after_s == pytest.approx(10)
    assert accounts.sign_in(db, throttle, user.email, "right-password").throttled
    clock.now = 11
    assert accounts.sign_in(db, throttle, user.email, "right-password").user is not None


def test_each_lockout_lasts_longer_up_to_a_cap():
    clock = Clock()
    throttle = accounts.LoginThrottle(max_failures=1, lockout_s=10, max_lockout_s=25, clock=clock)
    waits = []
    for _ in range(3):
        throttle.failed("a@b.c")
        waits.append(throttle.retry_after_s("a@b.c"))
        clock.now += 100
    assert waits == [10, 20, 25]


def test_an_oidc_identity_maps_to_one_local_account(db, settings):
    first = accounts.account_for_identity(db, settings, "Pat@Example.com", "Pat Doe")
    again = accounts.account_for_identity(db, settings, "pat@example.com")
    assert first.id == again.id and first.display_name == "Pat Doe"
    assert first.role is Role.USER and first.balance == settings.starting_credits
    assert accounts.account_for_identity(db, settings, None) is None
    assert accounts.account_for_identity(db, settings, "not an email") is None
    with db.begin() as session:
        session.get(User, first.id).is_active = False
    assert accounts.account_for_identity(db, settings, "pat@example.com") is None
