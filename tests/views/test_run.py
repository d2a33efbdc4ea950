"""One run as the watch page and the API read it: the run itself, and its still and clip."""

from __future__ import annotations

import pytest

from core.auth import Role
from core.errors import NotFoundError
from core.views.run import load_result, load_run
from tests.views.runs import add_files, finish, start


def test_a_run_is_read_by_its_owner_and_an_admin_and_missing_for_anyone_else(db, make_user):
    owner, stranger = make_user(), make_user()
    admin = make_user(role=Role.ADMIN)
    workflow_id = start(db, owner)
    with db.read() as session:
        assert load_run(session, workflow_id, owner).id == workflow_id
        assert load_run(session, workflow_id, admin).user_id == owner.id
        with pytest.raises(NotFoundError):
            load_run(session, workflow_id, stranger)
        with pytest.raises(NotFoundError):
            load_run(session, "no-such-run", owner)


def test_the_result_holds_the_still_and_the_clip_of_a_finished_run(db, make_user):
    user = make_user()
    done, bare, image_only = start(db, user), start(db, user), start(db, user)
    for workflow_id in (done, bare, image_only):
        finish(db, workflow_id, {})
    add_files(db, done, user, ("video", "image"))
    add_files(db, image_only, user, ("image",))
    with db.read() as session:
        result = load_result(session, done)
        empty = load_result(session, bare)
        still = load_result(session, image_only)
    assert (result.image.kind, result.video.kind) == ("image", "video")
    assert result.video.storage_key == "k/video" and not result.is_empty
    assert empty.image is None and empty.video is None and empty.is_empty
    assert still.video is None and not still.is_empty
