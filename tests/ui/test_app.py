"""The app frame: the login gate, the menu a user gets, the sidebar and signing out."""

from __future__ import annotations

from sqlalchemy import delete

from core import auth
from core.auth import Role
from core.models import SignInSession, User
from core.ui import nav
from tests.ui.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, ROOT, app_for, main_run, texts


def sign_in(at, email: str, password: str):
    if at.button:  # after app.py's first run the page draws the gate itself (see app_for)
        at.run()
    at.text_input(key="login_email").input(email)
    at.text_input(key="login_password").input(password)
    return at.button[0].click().run()


def test_a_visitor_sees_only_the_sign_in_form(engine):
    at = app_for(None)
    assert not at.exception
    assert at.text_input(key="login_email") is not None
    assert not at.sidebar.metric  # no balance, no menu content before signing in
    assert "Create a video" not in texts(at)


def test_the_first_admin_signs_in_with_the_configured_password(engine):
    at = sign_in(app_for(None), ADMIN_EMAIL, ADMIN_PASSWORD)
    assert not at.exception
    assert "Create a video" in texts(at)
    at = main_run(at)
    assert at.sidebar.metric[0].value == "100"
    assert ADMIN_EMAIL in texts(at)


def test_a_wrong_password_is_refused_without_saying_which_part_was_wrong(engine, make_user):
    user = make_user()
    at = sign_in(app_for(None), user.email, "not-the-password")
    assert not at.exception
    assert [e.value for e in at.error] == ["Wrong email or password."]
    assert "auth_user_id" not in at.session_state


def test_an_unknown_email_gets_the_same_answer_as_a_wrong_password(engine):
    at = sign_in(app_for(None), "nobody@example.com", "whatever-123")
    assert [e.value for e in at.error] == ["Wrong email or password."]


def test_repeated_failures_lock_the_account_for_a_while(engine, make_user):
    user = make_user()
    at = app_for(None)
    for _ in range(5):
        at = sign_in(at, user.email, "wrong-password")
    assert "Too many failed sign-ins" in at.error[0].value
    at = sign_in(at, user.email, "password-123")  # the right password, but still locked
    assert "Too many failed sign-ins" in at.error[0].value
    assert "auth_user_id" not in at.session_state
    engine.throttle.succeeded(user.email)


def test_a_user_signs_in_and_sees_their_balance_and_the_studio_pages(engine, make_user):
    user = make_user(credits=42)
    at = main_run(sign_in(app_for(None), user.email, "password-123"))
    assert not at.exception
    assert at.session_state["auth_user_id"] == user.id
    assert at.sidebar.metric[0].value == "42"  # app.py's sidebar, drawn on the first run


def test_a_deep_link_survives_signing_in(engine, make_user):
    user = make_user()
    at = app_for(None)
    at.switch_page(nav.WATCH.path)
    at.query_params["id"] = "0" * 32
    at.run()
    assert at.text_input(key="login_email") is not None  # the gate, not the page
    at = sign_in(at, user.email, "password-123")
    assert "There is no such run" in texts(at)  # the watch page, for the id in the link
    assert "0" * 32 in texts(at)


def test_signing_out_returns_to_the_sign_in_form(engine, make_user):
    at = app_for(make_user())
    at.button(key="app_sign_out").click()
    at = main_run(at)
    assert not at.exception
    assert "auth_user_id" not in at.session_state
    assert at.text_input(key="login_email") is not None


def test_a_deactivated_account_is_signed_out_on_its_next_click(engine, make_user, runtime):
    user = make_user()
    at = app_for(user)
    with runtime.db.begin() as session:
        session.get(User, user.id).is_active = False
    at.run()
    assert "no longer active" in texts(at)
    assert at.text_input(key="login_email") is not None


def test_single_sign_on_is_offered_when_auth_is_configured(engine):
    at = app_for(None)
    at.secrets["auth"] = {
        "redirect_uri": "http://localhost:8501/oauth2callback",
        "cookie_secret": "secret",
        "google": {"client_id": "id", "client_secret": "s", "server_metadata_url": "https://x"},
    }
    at.run()
    assert not at.exception
    assert at.button(key="login_oidc_google").label == "Sign in with Google"


def test_an_oidc_identity_gets_a_local_account_on_first_sign_in(engine, runtime):
    at = app_for(None)
    at.secrets["auth"] = {
        "redirect_uri": "http://localhost:8501/oauth2callback",
        "cookie_secret": "secret",
        "client_id": "id",
        "client_secret": "s",
        "server_metadata_url": "https://x",
    }
    at.user = {"is_logged_in": True, "email": "Oidc.Person@Example.com", "name": "Oidc Person"}
    at.run()
    assert not at.exception
    with runtime.db.read() as session:
        user = auth.find_user(session, "oidc.person@example.com")
    assert user is not None and user.role is Role.USER
    assert at.session_state["auth_user_id"] == user.id
    assert "Oidc Person" in texts(main_run(at))


def test_a_non_admin_menu_has_no_admin_pages_even_when_their_files_exist(monkeypatch, tmp_path):
    for spec in nav.ADMIN_PAGES:
        (tmp_path / spec.path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / spec.path).write_text("")
    monkeypatch.setattr(nav, "APP_ROOT", tmp_path)
    assert nav.pages_for(False) == list(nav.USER_PAGES)
    assert nav.pages_for(True) == [*nav.USER_PAGES, *nav.ADMIN_PAGES]


def test_admin_pages_join_the_menu_only_once_their_file_exists(monkeypatch, tmp_path):
    monkeypatch.setattr(nav, "APP_ROOT", tmp_path)
    assert nav.pages_for(True) == list(nav.USER_PAGES)
    assert (ROOT / nav.CREATE.path).is_file()


def test_sign_out_everywhere_ends_the_session_in_every_tab(engine, make_user):
    user = make_user()
    first = main_run(sign_in(app_for(None), user.email, "password-123"))
    second = main_run(sign_in(app_for(None), user.email, "password-123"))
    assert second.session_state["auth_user_id"] == user.id
    first.button(key="app_sign_out_everywhere").click()
    first = main_run(first)
    assert first.text_input(key="login_email") is not None
    second = main_run(second)  # the other tab's next click
    assert not second.exception
    assert "auth_user_id" not in second.session_state
    assert "Your session ended. Sign in again." in texts(second)


def test_a_non_admin_asking_for_an_admin_page_is_refused_on_it(engine, make_user):
    at = app_for(make_user(), page=nav.MONITORING.path)
    assert not at.exception
    assert "This page is for administrators." in texts(at)


def test_until_someone_signs_in_the_gate_says_where_the_first_admin_password_is(
    engine, runtime, make_user
):
    with runtime.db.begin() as session:
        session.execute(delete(SignInSession))  # a fresh install: nobody has signed in yet
    at = app_for(None)
    assert "First start: the first admin account is admin@example.com" in texts(at)
    assert "ADMIN_PASSWORD" in texts(at)
    user = make_user()
    sign_in(at, user.email, "password-123")
    assert "First start" not in texts(app_for(None))
