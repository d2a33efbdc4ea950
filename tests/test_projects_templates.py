"""Projects and templates: per-user names, validation, upsert and ownership."""

from __future__ import annotations

import pytest

from core import projects, templates
from core.errors import NotFoundError, RequestValidationError

REQUEST = {"imagePrompt": "a fox", "videoPrompt": "slow pan", "projectId": 3}


def test_projects_are_per_user_and_unique_ignoring_case(db, make_user):
    alice, bob = make_user(), make_user()
    with db.begin() as session:
        made = projects.create_project(session, alice.id, "  Winter   campaign ")
        projects.create_project(session, bob.id, "Winter campaign")
    assert made.name == "Winter campaign"
    with db.begin() as session, pytest.raises(RequestValidationError):
        projects.create_project(session, alice.id, "WINTER CAMPAIGN")
    with db.read() as session:
        assert [p.name for p in projects.list_projects(session, alice.id)] == ["Winter campaign"]


@pytest.mark.parametrize("name", ["", "   ", "x" * 121])
def test_a_project_needs_a_sensible_name(db, make_user, name):
    user = make_user()
    with db.begin() as session, pytest.raises(RequestValidationError):
        projects.create_project(session, user.id, name)


@pytest.mark.parametrize("name", ["fox \u202egnp.exe\u202c", "bell\x07"])
def test_project_and_template_names_with_control_characters_are_refused(db, make_user, name):
    user = make_user()
    with db.begin() as session, pytest.raises(RequestValidationError) as project:
        projects.create_project(session, user.id, name)
    assert "control characters" in project.value.problems["project"]
    with db.begin() as session, pytest.raises(RequestValidationError) as template:
        templates.save_template(session, user.id, name, {"imagePrompt": "a", "videoPrompt": "b"})
    assert "control characters" in template.value.problems["template"]


def test_saving_a_template_twice_under_one_name_updates_it(db, make_user):
    user = make_user()
    with db.begin() as session:
        first, created = templates.save_template(
            session, user.id, "Fox", REQUEST, {"camera": "pan left", "bogus": "x"}
        )
        assert created
        second, created = templates.save_template(
            session, user.id, "Fox", {**REQUEST, "videoPrompt": "tilt up"}
        )
        assert not created and second.id == first.id
    with db.read() as session:
        (stored,) = templates.list_templates(session, user.id)
    assert stored.request["videoPrompt"] == "tilt up"
    assert "projectId" not in stored.request  # a template is not tied to a project
    assert first.builder == {"camera": "pan left"}


def test_a_template_must_hold_a_valid_request(db, make_user):
    user = make_user()
    with db.begin() as session, pytest.raises(RequestValidationError) as refused:
        templates.save_template(session, user.id, "Bad", {**REQUEST, "imagePrompt": ""})
    assert "imagePrompt" in refused.value.problems


def test_nobody_reads_or_deletes_another_users_template(db, make_user):
    owner, other = make_user(), make_user()
    with db.begin() as session:
        saved, _ = templates.save_template(session, owner.id, "Mine", REQUEST)
    with db.begin() as session:
        with pytest.raises(NotFoundError):
            templates.get_template(session, other.id, saved.id)
        with pytest.raises(NotFoundError):
            templates.delete_template(session, other.id, saved.id)
    with db.begin() as session:
        templates.delete_template(session, owner.id, saved.id)
        assert templates.list_templates(session, owner.id) == []
