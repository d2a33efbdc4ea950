"""The API tokens page: a token is created with its secret shown once (and that secret works),
the list says when each was last used, revoking asks first, and only an admin sees every user's
tokens."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from core import tokens, webhooks
from core.auth import Role
from core.ui import nav
from tests.ui.conftest import app_for, texts

PAGE = nav.API_TOKENS.path


def page(user) -> AppTest:
    at = app_for(user, page=PAGE)
    assert not at.exception
    return at


def listed(at: AppTest, *, everyone: bool = False):
    """The page's own-tokens table, or (everyone=True) the admin's table with owners."""
    tables = [d.value for d in at.dataframe if ("owner" in d.value.columns) == everyone]
    return tables[0] if tables else None


def test_a_created_token_is_shown_once_and_works(runtime, make_user):
    user = make_user()
    at = page(user)
    at.text_input(key="tokens_create_name").input("nightly script")
    at = at.button(key="tokens_create_submit").click().run()
    assert not at.exception
    assert "shown only this once" in texts(at)
    secret = at.code[0].value
    with runtime.db.read() as session:
        bearer = tokens.authenticate(session, secret)
    assert bearer is not None and bearer.user.id == user.id
    assert list(listed(at)["name"]) == ["nightly script"]
    assert list(listed(at)["prefix"]) == [f"{secret[:8]}…"]
    at = at.run()
    assert not at.exception
    assert not at.code and secret not in texts(at)


def test_the_list_says_when_a_token_was_last_used(runtime, make_user):
    user = make_user()
    with runtime.db.begin() as session:
        used = tokens.create_token(session, user.id, name="used")
        tokens.create_token(session, user.id, name="idle")
    with runtime.db.begin() as session:
        tokens.record_use(session, tokens.authenticate(session, used.secret))
    table = listed(page(user)).set_index("name")
    assert table.loc["idle", "last used"] == "never"
    assert table.loc["used", "last used"][:2] == "20"  # a date
    assert set(table["state"]) == {"active"}


def test_revoking_asks_first_and_then_stops_the_token(runtime, make_user):
    user = make_user()
    with runtime.db.begin() as session:
        issued = tokens.create_token(session, user.id, name="old laptop")
    at = page(user)
    at.selectbox(key="tokens_revoke_choice").set_value(issued.token.id)
    at = at.button(key="tokens_revoke").click().run()
    assert not at.exception
    assert "old laptop" in texts(at)
    with runtime.db.read() as session:
        assert tokens.authenticate(session, issued.secret) is not None  # only asked so far
    at = at.button(key="tokens_revoke_confirm").click().run()
    assert not at.exception
    with runtime.db.read() as session:
        assert tokens.authenticate(session, issued.secret) is None
    assert "Token revoked." in texts(at)
    assert list(listed(at)["state"]) == ["revoked"]
    assert list(listed(at)["revoked"])[0][:2] == "20"  # when
    assert "tokens_revoke_choice" not in [s.key for s in at.selectbox]  # nothing left


def test_only_an_admin_sees_every_users_tokens(runtime, make_user):
    user, admin = make_user(), make_user(role=Role.ADMIN)
    with runtime.db.begin() as session:
        tokens.create_token(session, user.id, name="users own")
    theirs = page(user)
    assert listed(theirs, everyone=True) is None
    assert "Every user's tokens" not in texts(theirs)
    admins = page(admin)
    assert user.email in set(listed(admins, everyone=True)["owner"])
    assert listed(admins) is None  # the admin has no token of their own yet


def test_the_page_reveals_the_webhook_secret_that_signs_this_users_deliveries(runtime, make_user):
    user = make_user()
    at = page(user)
    assert not at.code  # hidden until asked for
    at = at.toggle(key="tokens_webhook_reveal").set_value(True).run()
    assert not at.exception
    with runtime.db.begin() as session:
        signing = webhooks.signing_secret(session, user.id)
    assert [c.value for c in at.code] == [signing]
