"""AppTest fixtures: one real engine per test session (thread pool, offline providers with no
latency, a temporary SQLite file), shared by the app's st.cache_resource exactly as a server
process shares it. Each test makes its own users, so tests never see each other's runs."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from core import auth, workflows
from core.auth import Role, UserView
from core.clock import utcnow
from core.runtime import Runtime
from core.schemas import parse_request
from core.states import StepName, StepStatus, WorkflowStatus
from core.ui.runtime import AppServices, get_services
from core.workflows import WorkflowView
from tests import stepping

ROOT = Path(__file__).resolve().parents[2]
ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "admin-password-1"
TEST_RUNNER = "runner-under-test"
ENGINE_ENV = {
    "OFFLINE_LATENCY_S": "0",
    "POLL_INTERVAL_S": "0.01",
    "PROGRESS_MIN_INTERVAL_S": "0",
    "RETRY_INITIAL_WAIT_S": "0",
    "RETRY_MAX_WAIT_S": "0",
    "WORKER_THREADS": "2",
    "ADMIN_EMAIL": ADMIN_EMAIL,
    "ADMIN_PASSWORD": ADMIN_PASSWORD,
    "ALLOW_PRIVATE_WEBHOOKS": "1",  # the tests' receivers listen on 127.0.0.1
    "WEBHOOK_POLL_INTERVAL_S": "0.05",
}
PAYLOAD = {
    "imagePrompt": "a red fox in fresh snow",
    "videoPrompt": "slow dolly in, snow falling",
    "videoConfig": {"duration": "4s", "resolution": "720p", "generateAudio": False},
}


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServices]:
    """The app's engine, built through the app's own cached factory."""
    data_dir = tmp_path_factory.mktemp("ui") / "data"
    saved = {name: os.environ.get(name) for name in [*ENGINE_ENV, "DATA_DIR", "DATABASE_URL"]}
    os.environ.update(ENGINE_ENV, DATA_DIR=str(data_dir))
    os.environ.pop("DATABASE_URL", None)
    st.cache_resource.clear()
    try:
        built = get_services()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    yield built
    built.runtime.shutdown()
    st.cache_resource.clear()
    st.cache_data.clear()


@pytest.fixture
def runtime(engine: AppServices) -> Runtime:
    return engine.runtime


@pytest.fixture
def make_user(runtime: Runtime) -> Callable[..., UserView]:
    def make(
        credits: int = 100, role: Role = Role.USER, password: str = "password-123"
    ) -> UserView:
        with runtime.db.begin() as session:
            return auth.create_user(
                session,
                f"ui-{uuid.uuid4().hex[:8]}@example.com",
                password=password,
                role=role,
                starting_credits=credits,
            )

    return make


def refreshed(runtime: Runtime, user: UserView) -> UserView:
    with runtime.db.read() as session:
        found = auth.get_user(session, user.id)
    assert found is not None
    return found


def app_for(user: UserView | None, *, page: str | None = None, **query: str) -> AppTest:
    """The app signed in as `user`: app.py runs once, then `page` (with `query`) if given.

    AppTest quirk: because a pages/ folder sits beside app.py, every run after the first runs
    the current page's file on its own, without app.py (as if pages/ were a v1 multipage app).
    So the app frame (sidebar, menu) is only drawn on the first run and on `main_run`, and each
    page must check the session itself, which is the rule anyway.
    """
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=30)
    if user is not None:
        at.session_state["auth_user_id"] = user.id
    at.run()
    if page is not None:
        at.switch_page(page)
    for name, value in query.items():
        at.query_params[name] = value
    if page is not None or query:
        at.run()
    return at


def main_run(at: AppTest) -> AppTest:
    """Run app.py itself again (its default page), as a browser reload of the root URL does."""
    at._page_hash = ""  # noqa: SLF001 - see app_for
    at._finished_page_script_hash = ""  # noqa: SLF001
    return at.run()


def texts(at: AppTest) -> str:
    """Everything the page wrote, as one string to search in."""
    kinds = (
        "markdown",
        "caption",
        "error",
        "warning",
        "info",
        "success",
        "title",
        "subheader",
        "text",
    )
    parts = [str(element.value) for kind in kinds for element in getattr(at, kind)]
    parts.extend(bar.proto.text for bar in at.get("progress"))
    return "\n".join(parts)


def load(runtime: Runtime, workflow_id: str) -> WorkflowView:
    with runtime.db.read() as session:
        return workflows.load_workflow(session, workflow_id)


def wait_until_done(runtime: Runtime, workflow_id: str, timeout_s: float = 60) -> WorkflowView:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        view = load(runtime, workflow_id)
        if view.status.is_terminal:
            return view
        time.sleep(0.05)
    raise AssertionError(f"workflow {workflow_id} still {view.status} after {timeout_s} s")


def queued_run(runtime: Runtime, user: UserView, payload: dict[str, Any] | None = None) -> str:
    """A run created and charged but handed to no worker: it stays queued while a test looks."""
    workflow_id = workflows.start_workflow(
        runtime.db,
        user_id=user.id,
        request=parse_request(payload or PAYLOAD),
        client_key=uuid.uuid4().hex,
        actor=user.email,
    ).workflow_id
    return workflow_id


def running_run(runtime: Runtime, user: UserView, video_output: dict[str, Any]) -> str:
    """A run held by a pretend runner, its first three steps done and generate_video processing
    with `video_output` as the provider's progress detail."""
    workflow_id = queued_run(runtime, user)
    with runtime.db.begin() as session:
        assert workflows.claim(
            session, workflow_id, TEST_RUNNER, stale_before=utcnow() - timedelta(hours=1)
        )
        deadline = utcnow() + timedelta(hours=1)
        for step in (StepName.VALIDATE, StepName.GENERATE_IMAGE, StepName.UPLOAD_IMAGE):
            stepping.start_step(session, workflow_id, step, TEST_RUNNER, deadline_at=deadline)
            stepping.complete_step(session, workflow_id, step, TEST_RUNNER, {})
        stepping.start_step(
            session, workflow_id, StepName.GENERATE_VIDEO, TEST_RUNNER, deadline_at=deadline
        )
        stepping.write_step(
            session,
            workflow_id,
            StepName.GENERATE_VIDEO,
            StepStatus.PROCESSING,
            TEST_RUNNER,
            progress=5,
            message="in the provider's queue",
            output=video_output,
        )
    return workflow_id


def end_running(
    runtime: Runtime,
    workflow_id: str,
    status: WorkflowStatus,
    message: str,
    *,
    provider_cancel_confirmed: bool | None = None,
) -> None:
    with runtime.db.begin() as session:
        if provider_cancel_confirmed is not None:
            workflows.record_provider_cancel(
                session, workflow_id, TEST_RUNNER, confirmed=provider_cancel_confirmed
            )
        workflows.end_run(session, workflow_id, TEST_RUNNER, status, message=message, category=None)


@pytest.fixture(scope="session")
def finished_run(engine: AppServices) -> tuple[UserView, str]:
    """One real run through the offline providers, finished: (its owner, its id)."""
    runtime = engine.runtime
    with runtime.db.begin() as session:
        owner = auth.create_user(
            session, "gallery-owner@example.com", password="password-123", starting_credits=100
        )
    workflow_id, _ = runtime.start_workflow(
        owner, parse_request(PAYLOAD), client_key="finished-run"
    )
    view = wait_until_done(runtime, workflow_id)
    assert view.status is WorkflowStatus.COMPLETED, view.error_message
    return owner, workflow_id
