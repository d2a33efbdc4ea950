"""API tokens: shown once, stored hashed, and good only while unrevoked, unexpired and the
account active; on both databases."""

from datetime import timedelta
from hashlib import sha256

import pytest
from sqlalchemy import select, update

from core import tokens
from core.admin import set_active
from core.auth import Role
from core.clock import utcnow
from core.errors import NotFoundError, RequestValidationError
from core.models import ApiToken


def _issue(db, user, **kwargs) -> tokens.IssuedToken:
    with db.begin() as session:
        return tokens.create_token(session, user.id, **kwargs)


def _who(db, secret: str):
    with db.read() as session:
        bearer = tokens.authenticate(session, secret)
    return None if bearer is None else bearer.user


def test_a_new_token_acts_as_its_user_and_only_its_hash_is_stored(db, make_user):
    user = make_user()
    issued = _issue(db, user, name="notebook")
    assert len(issued.secret) >= 43  # 32 random bytes, url-safe base64
    assert issued.token.prefix == issued.secret[:8]
    assert _who(db, issued.secret).id == user.id
    with db.read() as session:
        stored = session.execute(select(ApiToken)).scalar_one()
    assert stored.secret_sha256 == sha256(issued.secret.encode()).hexdigest()
    assert issued.secret not in {stored.name, stored.prefix, stored.secret_sha256}


def test_an_unknown_secret_is_nobody(db, make_user):
    make_user()
    assert _who(db, "not-a-token") is None


def test_use_is_recorded_as_last_used_at_most_once_a_minute(db, make_user):
    issued = _issue(db, make_user())
    with db.read() as session:
        bearer = tokens.authenticate(session, issued.secret)
    assert bearer.last_used_at is None and bearer.use_is_news(utcnow())
    with db.begin() as session:
        tokens.record_use(session, bearer)
    with db.read() as session:
        used = tokens.authenticate(session, issued.secret)
    assert used.last_used_at is not None and not used.use_is_news(utcnow())
    with db.begin() as session:
        tokens.record_use(session, bearer)  # a stale snapshot: the write is still skipped
    with db.read() as session:
        assert tokens.list_tokens(session, bearer.user.id)[0].last_used_at == used.last_used_at


def test_a_revoked_token_stops_working_and_revoking_again_keeps_the_first_time(db, make_user):
    issued = _issue(db, make_user())
    with db.begin() as session:
        first = tokens.revoke_token(session, issued.token.prefix)
    assert _who(db, issued.secret) is None
    with db.begin() as session:
        again = tokens.revoke_token(session, str(issued.token.id))
    assert again.revoked_at == first.revoked_at is not None


def test_an_expired_token_stops_working(db, make_user):
    issued = _issue(db, make_user(), expires_days=1)
    assert _who(db, issued.secret) is not None
    with db.begin() as session:
        session.execute(
            update(ApiToken).values(expires_at=utcnow() - timedelta(seconds=1)),
            execution_options={"synchronize_session": False},
        )
    assert _who(db, issued.secret) is None


def test_a_deactivated_users_tokens_stop_working_at_once(db, make_user):
    admin = make_user(role=Role.ADMIN)
    user = make_user()
    issued = _issue(db, user)
    with db.begin() as session:
        set_active(session, admin, user.id, False)
    assert _who(db, issued.secret) is None


def test_tokens_are_listed_newest_first_with_their_names(db, make_user):
    user = make_user()
    _issue(db, user, name="first")
    _issue(db, user, name="second")
    _issue(db, make_user(), name="someone else's")
    with db.read() as session:
        listed = tokens.list_tokens(session, user.id)
    assert [t.name for t in listed] == ["second", "first"]


def test_bad_token_requests_name_the_field(db, make_user):
    user = make_user()
    with pytest.raises(RequestValidationError) as refused:
        _issue(db, user, expires_days=0)
    assert "expiresDays" in refused.value.problems
    with pytest.raises(RequestValidationError) as refused:
        _issue(db, user, name="x" * 121)
    assert "name" in refused.value.problems
    with pytest.raises(RequestValidationError) as refused:
        _issue(db, user, name="laptop\x00")
    assert refused.value.problems == {"name": "contains control characters"}
    with pytest.raises(NotFoundError), db.begin() as session:
        tokens.revoke_token(session, "nosuchpx")
