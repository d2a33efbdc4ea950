"""Bearer tokens for the HTTP API: created (the secret shown once), listed, revoked, and turned
back into their user on every request. The caller owns the transaction, as in core.credits.

Only the SHA-256 of a secret is stored. A fast hash is right here, unlike for passwords: the
secrets are 256 random bits, so there is nothing to guess from a leaked hash and no reason to
make each request pay for a slow one.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from core.auth import UserView, get_user
from core.clock import utcnow
from core.errors import NotFoundError, PermissionDeniedError, RequestValidationError
from core.models import ApiToken, User, view_of
from core.schemas import text_problem

PREFIX_CHARS = 8
NAME_MAX_CHARS = 120
# last_used_at is a hint for the tokens list, not an audit trail: one write a minute is enough.
LAST_USED_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True)
class TokenView:
    id: int
    user_id: int
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None

    def is_usable(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def state(self, now: datetime) -> str:
        return "revoked" if self.revoked_at else "active" if self.is_usable(now) else "expired"


@dataclass(frozen=True)
class IssuedToken:
    token: TokenView
    secret: str  # shown once; only its hash is kept


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_token(
    session: Session, user_id: int, *, name: str = "", expires_days: int | None = None
) -> IssuedToken:
    name = name.strip()
    if len(name) > NAME_MAX_CHARS:
        raise RequestValidationError({"name": f"is too long (at most {NAME_MAX_CHARS} characters)"})
    if problem := text_problem(name):
        raise RequestValidationError({"name": problem})
    if expires_days is not None and expires_days < 1:
        raise RequestValidationError({"expiresDays": "must be at least 1"})
    if get_user(session, user_id) is None:
        raise NotFoundError(f"user {user_id} does not exist")
    secret = secrets.token_urlsafe(32)  # 32 bytes: 256 random bits
    now = utcnow()
    row = ApiToken(
        user_id=user_id,
        name=name,
        prefix=secret[:PREFIX_CHARS],
        secret_sha256=_digest(secret),
        created_at=now,
        expires_at=now + timedelta(days=expires_days) if expires_days else None,
    )
    session.add(row)
    session.flush()
    return IssuedToken(view_of(TokenView, row), secret)


def list_tokens(session: Session, user_id: int) -> list[TokenView]:
    """A user's tokens, newest first, revoked and expired ones included (marked as such)."""
    rows = session.execute(
        select(ApiToken)
        .where(ApiToken.user_id == user_id)
        .order_by(ApiToken.created_at.desc(), ApiToken.id.desc())
    ).scalars()
    return [view_of(TokenView, row) for row in rows]


def revoke_token(session: Session, prefix_or_id: str) -> TokenView:
    """Revoke the one token with this id or prefix (the CLI, which acts for the operator)."""
    match = ApiToken.prefix == prefix_or_id
    if prefix_or_id.isdigit():
        match = or_(match, ApiToken.id == int(prefix_or_id))
    rows = session.execute(select(ApiToken).where(match)).scalars().all()
    if not rows:
        raise NotFoundError(f"no token with id or prefix {prefix_or_id}")
    if len(rows) > 1:
        raise RequestValidationError({"token": f"{prefix_or_id} matches several; use the id"})
    return _revoke(session, rows[0])


def revoke_for(session: Session, viewer: UserView, token_id: int) -> TokenView:
    """Revoke a token on the viewer's behalf: their own, or anyone's for an admin. Another
    user's token looks missing, as their runs do."""
    row = session.get(ApiToken, token_id)
    if row is None or (row.user_id != viewer.id and not viewer.is_admin):
        raise NotFoundError(f"no token {token_id}")
    return _revoke(session, row)


def _revoke(session: Session, row: ApiToken) -> TokenView:
    if row.revoked_at is None:  # revoking twice keeps the first time
        row.revoked_at = utcnow()
        session.flush()
    return view_of(TokenView, row)


@dataclass(frozen=True)
class OwnedToken:
    token: TokenView
    owner_email: str


def list_all_tokens(session: Session, viewer: UserView) -> list[OwnedToken]:
    """Every user's tokens, newest first, for an admin."""
    if not viewer.is_admin:
        raise PermissionDeniedError("only an admin may list other users' tokens")
    rows = session.execute(
        select(ApiToken, User.email)
        .join(User, User.id == ApiToken.user_id)
        .order_by(ApiToken.created_at.desc(), ApiToken.id.desc())
    )
    return [OwnedToken(view_of(TokenView, token), email) for token, email in rows]


@dataclass(frozen=True)
class Bearer:
    """Who a request's token stands for, and whether its last use is worth recording."""

    user: UserView
    token_id: int
    last_used_at: datetime | None

    def use_is_news(self, now: datetime) -> bool:
        return self.last_used_at is None or self.last_used_at < now - LAST_USED_RESOLUTION


def authenticate(session: Session, secret: str) -> Bearer | None:
    """The active user a usable token belongs to, else None. Checked on every request, so a
    revoked token or a deactivated account stops working at once. Reads only: most requests
    need no write (see record_use), which matters on SQLite's single writer."""
    row = session.execute(
        select(ApiToken).where(ApiToken.secret_sha256 == _digest(secret))
    ).scalar_one_or_none()
    if row is None or not view_of(TokenView, row).is_usable(utcnow()):
        return None
    user = get_user(session, row.user_id)
    if user is None or not user.is_active:
        return None
    return Bearer(user, row.id, row.last_used_at)


def record_use(session: Session, bearer: Bearer) -> None:
    """Note the token's use, at most once per LAST_USED_RESOLUTION."""
    now = utcnow()
    session.execute(
        update(ApiToken)
        .where(
            ApiToken.id == bearer.token_id,
            or_(
                ApiToken.last_used_at.is_(None),
                ApiToken.last_used_at < now - LAST_USED_RESOLUTION,
            ),
        )
        .values(last_used_at=now),
        execution_options={"synchronize_session": False},
    )
