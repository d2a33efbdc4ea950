"""Text that came from a user is shown literally on every page: hostile prompts, names, emails,
ledger reasons, provider messages and ids from the URL never become a link, an image, a
heading, emphasis, an emoji, a colour, LaTeX or HTML.

Every element whose text Streamlit interprets (Markdown bodies, alerts, titles, labels, help,
progress text) is searched for a fragment of each hostile string; the strings themselves must
show up in elements that interpret nothing (st.text, dataframe cells)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta

import pytest
from google.protobuf.message import Message

from core import admin, auth, projects, templates, workflows
from core.auth import Role, UserView
from core.clock import utcnow
from core.schemas import parse_request
from core.states import StepName, WorkflowStatus
from core.ui import format as fmt
from core.ui import nav
from tests import stepping
from tests.ui.conftest import (
    ADMIN_EMAIL,
    PAYLOAD,
    TEST_RUNNER,
    app_for,
    end_running,
    queued_run,
    wait_until_done,
)

IMAGE_PROMPT = (
    "![px](http://some-host/pixel.png) [sign in here](http://some-host/) # Big heading "
    "**bold** _em_ <img src=x onerror=alert(1)>"
)
VIDEO_PROMPT = (
    "<script>alert(1)</script> mail eve@evil.example, www.evil.example or "
    "https://evil.example/x $E=mc^2$ :red[alarm] :smile:"
)
NAME = "# [proj](http://some-host/) :smile: <b>x</b>"
EMAIL = "[x](http://some-host)@evil.example"
REASON = "**paid** [refund](http://some-host/) :red[now] $x$"
PROVIDER_ERROR = "Provider said: [retry here](http://some-host/) <script>x</script>"
URL_ID = "[Session expired — sign in here](http://some-host/)"
# A fragment of every string above, none of which our own words ever contain.
FRAGMENTS = (
    "some-host",
    "evil.example",
    "<script",
    "<b>",
    "onerror",
    ":smile:",
    ":red[",
    "$E=mc",
    "$x$",
    "Big heading",
    "**paid**",
    "Session expired",
)
INTERPRETED_FIELDS = {"body", "label", "help", "text", "caption", "title"}
LITERAL_TYPES = {"text", "code"}


@dataclass(frozen=True)
class World:
    owner: UserView
    admin: UserView
    failed: str
    completed: str
    template_id: int


@pytest.fixture(scope="module")
def world(engine) -> World:
    runtime = engine.runtime
    with runtime.db.begin() as session:
        admin_user = auth.find_user(session, ADMIN_EMAIL)
        created = admin.create_user(
            session, admin_user, EMAIL, password="password-123", display_name=NAME
        )
        owner = created.user
        admin.grant_credits(session, admin_user, owner.id, 200, reason=REASON)
        project = projects.create_project(session, owner.id, NAME)
        template, _ = templates.save_template(session, owner.id, NAME, PAYLOAD)
    payload = {
        **PAYLOAD,
        "imagePrompt": IMAGE_PROMPT,
        "videoPrompt": VIDEO_PROMPT,
        "projectId": project.id,
    }
    failed = queued_run(runtime, owner, payload)
    with runtime.db.begin() as session:
        assert workflows.claim(
            session, failed, TEST_RUNNER, stale_before=utcnow() - timedelta(hours=1)
        )
        deadline = utcnow() + timedelta(hours=1)
        stepping.start_step(session, failed, StepName.VALIDATE, TEST_RUNNER, deadline_at=deadline)
    end_running(runtime, failed, WorkflowStatus.FAILED, PROVIDER_ERROR)
    completed, _ = runtime.start_workflow(
        owner, parse_request(payload), client_key=uuid.uuid4().hex
    )
    assert wait_until_done(runtime, completed).status is WorkflowStatus.COMPLETED
    return World(owner, admin_user, failed, completed, template.id)


def _strings(message: Message) -> Iterator[str]:
    for field, value in message.ListFields():
        if field.message_type is not None:
            for child in value if isinstance(value, Sequence) else [value]:
                if isinstance(child, Message):
                    yield from _strings(child)
        elif field.name in INTERPRETED_FIELDS and isinstance(value, str):
            yield value


def _nodes(node) -> Iterator:
    yield node
    for child in getattr(node, "children", {}).values():
        yield from _nodes(child)


def interpreted(at) -> list[str]:
    """Every string on the page that Streamlit reads as Markdown (or HTML, LaTeX, emoji)."""
    found = []
    for node in _nodes(at._tree):  # noqa: SLF001 - the whole tree, blocks included
        proto = getattr(node, "proto", None)
        if isinstance(proto, Message) and getattr(node, "type", None) not in LITERAL_TYPES:
            found.extend(_strings(proto))
    return found


def literal(at) -> list[str]:
    """Every string shown without interpretation: st.text and dataframe cells."""
    shown = [t.value for t in at.text]
    for frame in at.dataframe:
        shown.extend(str(cell) for cell in frame.value.astype(str).to_numpy().ravel())
    return shown


def assert_inert(at, *expected: str) -> None:
    assert not at.exception
    leaked = [s for s in interpreted(at) if any(f in s for f in FRAGMENTS)]
    assert leaked == []
    shown = literal(at)
    for text in expected:
        assert any(text in s for s in shown), text


def test_the_watch_page_shows_prompts_reasons_and_provider_messages_literally(engine, world):
    at = app_for(world.owner, page=nav.WATCH.path, id=world.failed)
    assert_inert(at, IMAGE_PROMPT, VIDEO_PROMPT, PROVIDER_ERROR)


def test_a_run_id_from_the_url_is_echoed_literally(engine, world):
    at = app_for(world.owner, page=nav.WATCH.path, id=URL_ID)
    assert_inert(at, URL_ID)
    assert "There is no such run in your account" in at.error[0].value


def test_the_run_picker_shows_prompts_literally(engine, world):
    at = app_for(world.owner, page=nav.WATCH.path)
    assert_inert(at, fmt.shorten(IMAGE_PROMPT, 90))


def test_history_shows_prompts_and_project_names_literally(engine, world):
    at = app_for(world.owner, page=nav.HISTORY.path)
    assert_inert(at, fmt.shorten(IMAGE_PROMPT, 110), NAME)


def test_an_admins_everyone_view_shows_emails_literally(engine, world):
    for page in (nav.HISTORY.path, nav.GALLERY.path):
        at = app_for(world.admin, page=page)
        key = "history_everyone" if page == nav.HISTORY.path else "gallery_everyone"
        at.toggle(key=key).set_value(True).run()
        assert_inert(at, world.owner.email)


def test_the_gallery_shows_prompts_and_names_literally(engine, world):
    at = app_for(world.owner, page=nav.GALLERY.path)
    assert_inert(at, fmt.shorten(IMAGE_PROMPT, 70), fmt.shorten(VIDEO_PROMPT, 90), NAME)


def test_the_create_page_shows_names_and_copied_ids_literally(engine, world):
    at = app_for(world.owner, page=nav.CREATE.path, **{"from": URL_ID})
    assert_inert(at, URL_ID)
    at.selectbox(key="create_template").set_value(world.template_id).run()
    at.button(key="create_template_load").click().run()
    assert_inert(at, NAME)


def test_the_credits_page_shows_emails_names_and_reasons_literally(engine, world):
    at = app_for(world.admin, page=nav.CREDITS_ADMIN.path)
    at.selectbox(key="credits_ledger_user").select(world.owner.id).run()
    assert_inert(at, world.owner.email, NAME, REASON)


def test_the_monitoring_page_shows_emails_and_failure_messages_literally(engine, world):
    at = app_for(world.admin, page=nav.MONITORING.path)
    assert_inert(at, world.owner.email, PROVIDER_ERROR)


def test_the_sidebar_shows_the_name_and_email_literally(engine, world):
    at = app_for(world.owner)
    assert_inert(at, NAME, world.owner.email)
    assert world.owner.role is Role.USER
