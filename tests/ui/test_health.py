"""The system health page: admins see every check; anyone else is refused by the page itself."""

from pydantic import SecretStr
from streamlit.testing.v1 import AppTest

from core.auth import Role
from core.providers import build_providers
from core.ui import nav
from tests.ui.conftest import ROOT, app_for, texts


def test_an_admin_sees_every_check_up_on_an_offline_install(engine, make_user):
    at = app_for(make_user(role=Role.ADMIN), page=nav.HEALTH.path)
    assert not at.exception
    assert "All 6 checks are up." in texts(at)
    table = at.dataframe[0].value
    assert list(table["check"]) == [
        "database",
        "storage probe",
        "image provider",
        "video provider",
        "moderation provider",
        "storage credentials",
    ]


def page_alone(user) -> AppTest:
    """The page file run on its own: a non-admin's menu has no such page, so this is the only
    way to reach it, and it must still refuse by itself."""
    at = AppTest.from_file(str(ROOT / nav.HEALTH.path), default_timeout=30)
    if user is not None:
        at.session_state["auth_user_id"] = user.id
    return at.run()


def test_a_non_admin_has_no_health_page_and_the_page_itself_refuses_them(engine, make_user):
    user = make_user()
    assert nav.HEALTH not in nav.pages_for(user.is_admin)
    at = page_alone(user)
    assert not at.exception
    assert "This page is for administrators." in texts(at)
    assert not at.dataframe


def test_without_a_session_the_page_shows_only_the_login(engine):
    at = page_alone(None)
    assert not at.exception
    assert "checks are up" not in texts(at)
    assert at.text_input  # the sign-in form


def test_failing_real_providers_never_show_their_keys_on_the_page(engine, make_user, monkeypatch):
    secret, fal_secret = "sk-test-NEVER-ON-A-PAGE-42", "fal-NEVER-ON-A-PAGE-42"
    real = engine.runtime.settings.model_copy(
        update={
            "openai_api_key": SecretStr(secret),
            "openai_base_url": "http://127.0.0.1:9/v1",  # nothing listens: every check fails
            "fal_key": SecretStr(fal_secret),
            "fal_queue_run_host": "127.0.0.1:9",
        }
    )
    monkeypatch.setattr(engine.runtime, "settings", real)
    monkeypatch.setattr(engine.runtime, "providers", build_providers(real))  # the page checks these
    at = app_for(make_user(role=Role.ADMIN), page=nav.HEALTH.path)
    assert not at.exception
    shown = texts(at) + at.dataframe[0].value.to_csv()
    assert "checks are down" in shown
    assert secret not in shown and fal_secret not in shown
