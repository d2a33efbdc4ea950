"""Signed-in sessions behind the browser's cookie: signed and expiring, a server-side row that
sign-out, "sign out everywhere", deactivation and the idle and absolute limits all end."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from core import admin, auth, sessions
from core.auth import Role
from core.clock import utcnow
from core.models import SignInSession


def age(db, token: str, *, created_s: float = 0, seen_s: float = 0) -> None:
    """Pretend the session was opened `created_s` and last used `seen_s` seconds ago."""
    now = utcnow()
    with db.begin() as session:
        session.execute(
            update(SignInSession)
            .where(SignInSession.id == sessions._row_id(token))  # noqa: SLF001
            .values(
                created_at=now - timedelta(seconds=created_s),
                last_seen_at=now - timedelta(seconds=seen_s),
            )
        )


def opened(db, user_id: int) -> str:
    with db.begin() as session:
        return sessions.open_session(session, user_id)


def resumed(db, settings, token: str) -> int | None:
    with db.begin() as session:
        found = sessions.resume(session, token, settings)
    return None if found is None else found.user_id


def test_a_cookie_names_its_session_only_while_its_signature_holds(db, settings):
    secret = sessions.signing_secret(db, settings)
    assert sessions.signing_secret(db, settings) == secret  # generated once, then kept
    cookie = sessions.sign("the-token", secret)
    assert sessions.unsign(cookie, secret, max_age_s=60) == "the-token"
    # (Not a flipped last character: base64's last one partly holds padding bits, so some flips
    # decode to the same signature.)
    forged = cookie.replace("the-token", "an-admins-token", 1)
    assert sessions.unsign(forged, secret, max_age_s=60) is None
    assert sessions.unsign(cookie, "another-secret", max_age_s=60) is None
    assert sessions.unsign(cookie, secret, max_age_s=-1) is None  # expired


def test_a_session_lives_until_it_is_signed_out(db, settings, make_user):
    user = make_user()
    token, other = opened(db, user.id), opened(db, user.id)
    assert resumed(db, settings, token) == user.id
    with db.begin() as session:
        sessions.revoke(session, token)
    assert resumed(db, settings, token) is None
    assert resumed(db, settings, other) == user.id
    assert resumed(db, settings, "a token nobody was given") is None


def test_sign_out_everywhere_and_deactivation_end_every_session(db, settings, make_user):
    boss, user = make_user(role=Role.ADMIN), make_user()
    first, second = opened(db, user.id), opened(db, user.id)
    with db.begin() as session:
        assert sessions.revoke_all(session, user.id) == 2
    assert resumed(db, settings, first) is None and resumed(db, settings, second) is None
    third = opened(db, user.id)
    with db.begin() as session:
        admin.set_active(session, boss, user.id, False)
    assert resumed(db, settings, third) is None
    with db.begin() as session:
        admin.set_active(session, boss, user.id, True)
        assert auth.get_user(session, user.id).is_active
    assert resumed(db, settings, third) is None  # reactivation does not revive old sessions


def test_a_session_ends_when_idle_or_too_old(db, settings, make_user):
    user = make_user()
    idle, old, fresh = opened(db, user.id), opened(db, user.id), opened(db, user.id)
    age(db, idle, created_s=600, seen_s=settings.session_idle_timeout_s + 5)
    age(db, old, created_s=settings.session_max_age_s + 5, seen_s=5)
    age(db, fresh, created_s=settings.session_max_age_s - 60, seen_s=60)
    assert resumed(db, settings, idle) is None
    assert resumed(db, settings, old) is None
    assert resumed(db, settings, fresh) == user.id
    with db.read() as session:
        row = session.get(SignInSession, sessions._row_id(fresh))  # noqa: SLF001
        assert (utcnow() - row.last_seen_at).total_seconds() < 5  # use keeps it alive
