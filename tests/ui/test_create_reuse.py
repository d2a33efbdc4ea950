"""The create page's offer to reuse a still already paid for: shown with the run it comes
from and the credits it saves, on by default, and one click to generate a fresh still."""

from __future__ import annotations

import uuid

import pytest

from core import auth
from core.schemas import parse_request
from core.ui import nav
from tests.ui.conftest import PAYLOAD, app_for, load, texts, wait_until_done


@pytest.fixture(scope="module")
def paid_still(engine):
    """A user with one completed run of PAYLOAD (its still paid for and stored), shared by
    the tests below."""
    runtime = engine.runtime
    with runtime.db.begin() as session:
        user = auth.create_user(
            session, f"ui-{uuid.uuid4().hex[:8]}@example.com", starting_credits=100
        )
    source, _ = runtime.start_workflow(user, parse_request(PAYLOAD))
    assert wait_until_done(runtime, source).status.value == "completed"
    return user, source


def same_request_form(user):
    at = app_for(user, page=nav.CREATE.path)
    at.text_area(key="create_image_prompt").input(PAYLOAD["imagePrompt"])
    at.text_area(key="create_video_prompt").input("orbit around the fox")
    at.radio(key="create_duration").set_value("4s")
    at.toggle(key="create_audio").set_value(False)
    return at.run()


def reuse_toggles(at):
    return [t for t in at.toggle if t.key == "create_reuse_still"]


def test_the_paid_still_is_offered_on_by_default_and_the_watch_page_shows_the_saving(
    runtime, paid_still
):
    user, source = paid_still
    at = same_request_form(user)
    assert not at.exception
    (toggle,) = reuse_toggles(at)
    assert toggle.label == f"Reuse the still from run {source[:8]} (saves 3 credits)"
    assert toggle.value is True
    at.text_area(key="create_image_prompt").input("a grey wolf in fresh snow").run()
    assert reuse_toggles(at) == []  # another image request: nothing to reuse
    at.text_area(key="create_image_prompt").input(PAYLOAD["imagePrompt"]).run()
    at.button(key="create_start").click().run()
    assert not at.exception
    started = load(runtime, at.query_params["id"])
    assert started.reuse_image_from == source

    assert wait_until_done(runtime, started.id).status.value == "completed"
    watch = app_for(user, page=nav.WATCH.path, id=started.id)
    assert not watch.exception
    assert f"Still reused from run {source}, saved 3 credits." in texts(watch)


def test_one_click_switches_the_offer_off_for_a_fresh_still(runtime, paid_still):
    user, _ = paid_still
    at = same_request_form(user)
    at.toggle(key="create_reuse_still").set_value(False).run()
    at.button(key="create_start").click().run()
    assert not at.exception
    started = load(runtime, at.query_params["id"])
    assert started.reuse_image_from is None
    runtime.cancel(started.id, user)
