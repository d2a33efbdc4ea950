"""Users, roles and passwords (argon2). Sessions and login throttling live with the UI."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from core import credits
from core.errors import RequestValidationError
from core.models import User

OPERATOR_EMAIL = "operator@localhost"
_EMAIL = re.compile(r"[^@\s]+@[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?")
_hasher = PasswordHasher()


@cache
def _dummy_hash() -> str:
    """Verified against when the email is unknown, so both failures take alike. Made on first
    use, not at import: hashing costs every `python -m core` start a noticeable fraction of a
    second, and most commands never sign anyone in."""
    return _hasher.hash("not a real password")


class Role(StrEnum):
    USER = "user"
    ADMIN = "admin"


@dataclass(frozen=True)
class UserView:
    id: int
    email: str
    display_name: str
    role: Role
    balance: int
    is_active: bool

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN


def display_name_of(user: User) -> str:
    """The name shown for an account: its own, or the part of the email before the @."""
    return user.display_name or user.email.split("@")[0]


def _view(user: User) -> UserView:
    return UserView(
        id=user.id,
        email=user.email,
        display_name=display_name_of(user),
        role=Role(user.role),
        balance=user.balance,
        is_active=user.is_active,
    )


def normalize_email(email: str) -> str:
    """Lower-cased address. Deliberately only syntactic: internal accounts use domains such as
    `localhost` or `corp.internal` that strict validators reject."""
    email = email.strip().lower()
    if len(email) > 320 or not _EMAIL.fullmatch(email):
        raise RequestValidationError({"email": "must look like name@domain"})
    return email


def create_user(
    session: Session,
    email: str,
    *,
    password: str | None = None,
    role: Role = Role.USER,
    starting_credits: int = 0,
    actor: str = credits.SYSTEM_ACTOR,
) -> UserView:
    """Create an account and give it its starting grant (a ledger row, like every credit move)."""
    email = normalize_email(email)
    if password is not None and len(password) < 8:
        raise RequestValidationError({"password": "must be at least 8 characters"})
    if session.execute(select(User.id).where(User.email == email)).first():
        raise RequestValidationError({"email": f"{email} already has an account"})
    user = User(
        email=email,
        role=role.value,
        password_hash=_hasher.hash(password) if password else None,
        balance=0,
    )
    session.add(user)
    session.flush()
    if starting_credits > 0:
        credits.grant(session, user.id, starting_credits, actor=actor, reason="starting credits")
        session.refresh(user)
    return _view(user)


def get_user(session: Session, user_id: int) -> UserView | None:
    user = session.get(User, user_id)
    return None if user is None else _view(user)


def find_user(session: Session, email: str) -> UserView | None:
    user = session.execute(select(User).where(User.email == email.strip().lower())).scalar()
    return None if user is None else _view(user)


def ensure_user(session: Session, email: str, *, starting_credits: int) -> UserView:
    """The account for `email`, created with the starting grant on first use (CLI operator)."""
    return find_user(session, email) or create_user(
        session, email, starting_credits=starting_credits
    )


def authenticate(session: Session, email: str, password: str) -> UserView | None:
    """The active user whose password matches, else None (same work either way)."""
    user = session.execute(select(User).where(User.email == email.strip().lower())).scalar()
    stored = user.password_hash if user and user.password_hash else _dummy_hash()
    try:
        _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return None
    if user is None or not user.password_hash or not user.is_active:
        return None
    return _view(user)
