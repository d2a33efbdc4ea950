"""Signed-in sessions that survive a reload, a new tab and a bookmark.

Each sign-in is a server-side row; the browser keeps a random token naming it in a cookie signed
(HMAC, itsdangerous) with the installation's secret and stamped with its issue time. A session
ends when it is signed out (one or everywhere), when an admin deactivates the account, after
SESSION_IDLE_TIMEOUT_S without use, or SESSION_MAX_AGE_S after signing in. The row's id is the
token's SHA-256, so reading the table does not let anyone sign in.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from itsdangerous import BadSignature, TimestampSigner
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.clock import utcnow
from core.config import Settings
from core.db import Database
from core.models import Setting, SignInSession, User

COOKIE_NAME = "reelforge_session"
SECRET_SETTING_KEY = "session_secret"
_SALT = "reelforge.sign-in-session"
# last_seen_at is written at most this often: every page run reads the session, few write it.
TOUCH_EVERY_S = 30


@dataclass(frozen=True)
class Resumed:
    user_id: int
    signed_in_at: datetime


def signing_secret(db: Database, settings: Settings) -> str:
    """SESSION_SECRET when set; otherwise one generated on first use and kept in the settings
    table, which every app process and machine of the installation shares (a file in DATA_DIR
    would differ between machines). The first writer wins a race; the others read its value."""
    if settings.session_secret is not None:
        return settings.session_secret.get_secret_value()
    with db.read() as session:
        row = session.get(Setting, SECRET_SETTING_KEY)
    if row is None:
        try:
            with db.begin() as session:
                session.add(
                    Setting(key=SECRET_SETTING_KEY, value={"secret": secrets.token_hex(32)})
                )
        except IntegrityError:
            pass
        with db.read() as session:
            row = session.get_one(Setting, SECRET_SETTING_KEY)
    return row.value["secret"]


def _row_id(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def sign(token: str, secret: str) -> str:
    return TimestampSigner(secret, salt=_SALT).sign(token).decode()


def unsign(cookie: str, secret: str, max_age_s: float) -> str | None:
    """The token inside a cookie we signed less than `max_age_s` ago, else None."""
    try:
        return TimestampSigner(secret, salt=_SALT).unsign(cookie, max_age=max_age_s).decode()
    except BadSignature:  # a forged, altered or expired cookie
        return None


def open_session(session: Session, user_id: int) -> str:
    """A new session for a user who just signed in; returns the token for the cookie."""
    token = secrets.token_urlsafe(32)
    session.add(SignInSession(id=_row_id(token), user_id=user_id))
    return token


def resume(session: Session, token: str, settings: Settings) -> Resumed | None:
    """The session a token names, if it is still live (ending it if it just expired or its
    account was deactivated)."""
    row = session.get(SignInSession, _row_id(token))
    if row is None or row.revoked_at is not None:
        return None
    now = utcnow()
    idle_s = (now - row.last_seen_at).total_seconds()
    age_s = (now - row.created_at).total_seconds()
    user = session.get(User, row.user_id)
    if (
        idle_s > settings.session_idle_timeout_s
        or age_s > settings.session_max_age_s
        or user is None
        or not user.is_active
    ):
        row.revoked_at = now
        return None
    if idle_s >= TOUCH_EVERY_S:
        row.last_seen_at = now
    return Resumed(row.user_id, row.created_at)


def anyone_signed_in(session: Session) -> bool:
    """Whether anyone has ever signed in with a password (the first-start hint's question)."""
    return session.execute(select(SignInSession.id).limit(1)).first() is not None


def revoke(session: Session, token: str) -> None:
    session.execute(
        update(SignInSession)
        .where(SignInSession.id == _row_id(token), SignInSession.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )


def revoke_all(session: Session, user_id: int) -> int:
    """End every session of a user (sign out everywhere, deactivation); returns how many."""
    return session.execute(
        update(SignInSession)
        .where(SignInSession.user_id == user_id, SignInSession.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    ).rowcount
