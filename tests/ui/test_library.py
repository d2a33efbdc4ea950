"""History and gallery: a user's runs, filtered and searched, and the finished ones in a grid."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import OperationalError

from core.auth import Role
from core.states import WorkflowStatus
from core.ui import nav
from core.views import history as history_view
from tests.ui.conftest import PAYLOAD, app_for, queued_run, texts


def history(user, **query):
    return app_for(user, page=nav.HISTORY.path, **query)


def listed(at) -> set[str]:
    return {
        b.key.removeprefix("history_open_") for b in at.button if b.key.startswith("history_open_")
    }


def test_history_lists_the_users_own_runs_only(engine, make_user, runtime):
    user, other = make_user(), make_user()
    mine = queued_run(runtime, user)
    queued_run(runtime, other)
    at = history(user)
    assert not at.exception
    assert listed(at) == {mine}
    assert {m.label: m.value for m in at.metric}["⏳ queued"] == "1"


def test_search_finds_runs_by_prompt_words(engine, make_user, runtime):
    user = make_user()
    fox = queued_run(runtime, user)
    owl = queued_run(runtime, user, {**PAYLOAD, "imagePrompt": "a snowy owl at night"})
    at = history(user)
    at.text_input(key="history_search").input("OWL night").run()
    assert listed(at) == {owl}
    at.text_input(key="history_search").input(fox[:6]).run()  # a run id prefix works too
    assert listed(at) == {fox}
    at.text_input(key="history_search").input("100%_").run()  # LIKE wildcards are literal
    assert listed(at) == set()
    assert "No runs match these filters." in texts(at)


def test_the_status_filter_narrows_the_list(engine, make_user, runtime, finished_run):
    owner, finished = finished_run
    queued = queued_run(runtime, owner)
    at = history(owner)
    assert {finished, queued} <= listed(at)
    at.multiselect(key="history_status").select(WorkflowStatus.COMPLETED).run()
    assert finished in listed(at) and queued not in listed(at)


def test_open_goes_to_the_watch_page_of_that_run(engine, make_user, runtime):
    user = make_user()
    workflow_id = queued_run(runtime, user)
    at = history(user)
    at.button(key=f"history_open_{workflow_id}").click().run()
    assert not at.exception
    assert at.query_params["id"] == workflow_id


def test_an_admin_can_list_everyones_runs(engine, make_user, runtime):
    admin, user = make_user(role=Role.ADMIN), make_user()
    theirs = queued_run(runtime, user)
    at = history(admin)
    assert theirs not in listed(at)
    at.toggle(key="history_everyone").set_value(True).run()
    assert theirs in listed(at)
    assert user.email in texts(at)


def test_a_user_has_no_everyone_switch(engine, make_user):
    at = history(make_user())
    assert not at.toggle


def test_the_history_exports_the_filtered_runs_as_csv(engine, make_user, runtime):
    user = make_user()
    queued_run(runtime, user)
    at = history(user)
    (export,) = [b for b in at.get("download_button") if b.label == "Export CSV"]
    assert export is not None


def test_an_empty_history_says_so(engine, make_user):
    at = history(make_user())
    assert not at.exception
    assert "No runs match these filters." in texts(at)


def test_the_gallery_shows_finished_runs_with_their_video(engine, finished_run):
    owner, workflow_id = finished_run
    at = app_for(owner, page=nav.GALLERY.path)
    assert not at.exception
    assert len(at.get("video")) == 1
    at.button(key=f"gallery_open_{workflow_id}").click().run()
    assert at.query_params["id"] == workflow_id


def test_the_gallery_can_show_the_first_frames_instead(engine, finished_run):
    owner, _ = finished_run
    at = app_for(owner, page=nav.GALLERY.path)
    at.get("button_group")[0].set_value("Images").run()
    assert not at.exception
    assert len(at.get("image")) == 1
    assert not at.get("video")


def test_the_gallery_leaves_out_unfinished_and_other_peoples_runs(engine, make_user, runtime):
    user = make_user()
    queued_run(runtime, user)
    at = app_for(user, page=nav.GALLERY.path)
    assert not at.exception
    assert "No finished videos yet" in texts(at)
    assert not at.get("video")


@pytest.mark.parametrize(
    ("path", "paging_key"), [(nav.HISTORY.path, "history_next"), (nav.GALLERY.path, "gallery_next")]
)
def test_a_database_error_shows_the_banner_and_stops_the_page(
    engine, finished_run, monkeypatch, path, paging_key
):
    def down(*_args, **_kwargs):
        raise OperationalError("SELECT 1", {}, Exception("database is locked"))

    owner, _ = finished_run
    at = app_for(owner, page=path)
    assert at.button(key=paging_key)  # drawn when the runs could be read
    monkeypatch.setattr(history_view, "list_runs", down)
    at.run()
    assert not at.exception
    assert "The database is not answering right now." in texts(at)
    assert not [b for b in at.button if b.key == paging_key]  # the page stopped at the banner


def test_a_batch_shows_what_varies_between_its_runs(engine, make_user, runtime):
    from core import launch, prompts
    from core.launch import FormFields

    user = make_user()
    choices = prompts.ShotChoices("a fox trots through snow", lighting="golden hour")
    base = FormFields(image_prompt="a fox", video_prompt=prompts.build_video_prompt(choices))
    variants = launch.variations(base, 2, "lighting", choices)
    launch.start_batch(runtime, user, variants, "batch-varies")
    at = history(user, batch="batch-varies")
    assert not at.exception
    shown = [t.value for t in at.text]
    assert "varies: Golden" in shown and "varies: Blue" in shown
