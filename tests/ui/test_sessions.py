"""Sessions expire: after an hour without a page run, or twelve hours after signing in."""

import time

from streamlit.testing.v1 import AppTest

from core.ui.session import SEEN_AT_KEY, SIGNED_IN_AT_KEY, USER_KEY
from tests.ui.conftest import ROOT, texts


def app_with_session(user, *, signed_in_ago_s: float, seen_ago_s: float) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=30)
    now = time.time()
    at.session_state[USER_KEY] = user.id
    at.session_state[SIGNED_IN_AT_KEY] = now - signed_in_ago_s
    at.session_state[SEEN_AT_KEY] = now - seen_ago_s
    return at.run()


def signed_in(at: AppTest) -> bool:
    return not any(t.label == "Password" for t in at.text_input)


def test_a_recently_active_session_stays_signed_in(engine, make_user):
    at = app_with_session(make_user(), signed_in_ago_s=600, seen_ago_s=30)
    assert not at.exception
    assert signed_in(at)


def test_an_idle_session_expires_and_asks_to_sign_in_again(engine, make_user):
    at = app_with_session(make_user(), signed_in_ago_s=7200, seen_ago_s=3700)
    assert not at.exception
    assert not signed_in(at)
    assert "Your session expired. Sign in again." in texts(at)


def test_a_session_older_than_its_maximum_age_expires_even_when_active(engine, make_user):
    at = app_with_session(make_user(), signed_in_ago_s=13 * 3600, seen_ago_s=5)
    assert not at.exception
    assert not signed_in(at)
