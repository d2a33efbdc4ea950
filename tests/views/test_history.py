"""The history and gallery queries: listing, filtering and searching runs, and the gallery."""

from __future__ import annotations

from datetime import timedelta

from core.auth import Role
from core.models import Project, utcnow
from core.states import WorkflowStatus
from core.views import history
from core.views.history import RunFilter
from tests.views.runs import add_files, finish, start


def test_a_user_lists_only_their_runs_and_an_admin_may_list_all(db, make_user):
    alice, bob = make_user(), make_user()
    admin = make_user(role=Role.ADMIN)
    mine = start(db, alice)
    theirs = start(db, bob)
    with db.read() as session:
        assert [r.id for r in history.list_runs(session, alice, RunFilter()).rows] == [mine]
        assert {r.id for r in history.list_runs(session, alice, RunFilter(everyone=True)).rows} == {
            mine
        }  # "everyone" means nothing for a non-admin
        every = history.list_runs(session, admin, RunFilter(everyone=True))
    assert {mine, theirs} <= {r.id for r in every.rows}
    assert every.rows[0].owner_email in (alice.email, bob.email)


def test_search_matches_words_in_either_prompt_or_an_id_prefix(db, make_user):
    user = make_user()
    fox = start(db, user)
    owl = start(db, user, imagePrompt="an owl", videoPrompt="Tilt up at NIGHT")
    with db.read() as session:

        def found(text):
            return {r.id for r in history.list_runs(session, user, RunFilter(search=text)).rows}

        assert found("night owl") == {owl}
        assert found("FOX") == {fox}
        assert found(owl[:5]) == {owl}
        assert found("%") == set()


def test_filters_by_status_project_period_and_batch_and_pages(db, make_user):
    user = make_user()
    with db.begin() as session:
        project = Project(user_id=user.id, name="P")
        session.add(project)
        session.flush()
        project_id = project.id
    in_project = start(db, user, projectId=project_id)
    batch = [start(db, user, client_key=f"batch-key-{i}") for i in (1, 2)]
    with db.read() as session:
        assert [
            r.id for r in history.list_runs(session, user, RunFilter(project_id=project_id)).rows
        ] == [in_project]
        assert {
            r.id for r in history.list_runs(session, user, RunFilter(batch="batch-key")).rows
        } == set(batch)
        queued = RunFilter(statuses=(WorkflowStatus.QUEUED,))
        page = history.list_runs(session, user, queued, limit=2, offset=2)
        assert page.total == 3 and len(page.rows) == 1
        future = RunFilter(since=utcnow() + timedelta(minutes=1))
        assert history.list_runs(session, user, future).total == 0
        counts = history.status_counts(session, user, queued)
    assert counts[WorkflowStatus.QUEUED] == 3 and counts[WorkflowStatus.COMPLETED] == 0


def test_the_gallery_holds_finished_runs_with_their_assets(db, make_user):
    user = make_user()
    done, waiting = start(db, user), start(db, user)
    finish(db, done, {})
    add_files(db, done, user, ("image", "video"))
    with db.read() as session:
        items, total = history.gallery(session, user, RunFilter())
        active = history.active_runs(session, user)
    assert total == 1 and items[0].run.id == done
    assert items[0].video.storage_key == "k/video" and items[0].image.storage_key == "k/image"
    assert [r.id for r in active] == [waiting]


def test_filters_by_project_name_a_time_range_and_one_owner_for_an_admin(db, make_user):
    alice, bob, admin = make_user(), make_user(), make_user(role=Role.ADMIN)
    with db.begin() as session:
        project = Project(user_id=alice.id, name="Posters")
        session.add(project)
        session.flush()
        project_id = project.id
    in_project = start(db, alice, projectId=project_id)
    alices, bobs = start(db, alice), start(db, bob)
    now = utcnow()
    with db.read() as session:

        def found(viewer, **flt):
            return {r.id for r in history.list_runs(session, viewer, RunFilter(**flt)).rows}

        assert found(alice, project_name="posters") == {in_project}
        assert found(bob, project_name="Posters") == set()
        assert found(alice, until=now + timedelta(minutes=1)) == {in_project, alices}
        assert found(alice, until=now - timedelta(minutes=1)) == set()
        assert found(admin, everyone=True, owner_id=bob.id) == {bobs}
        assert found(alice, everyone=True, owner_id=bob.id) == {in_project, alices}  # not admin
        named = RunFilter(project_name="Posters", statuses=(WorkflowStatus.QUEUED,))
        assert history.status_counts(session, alice, named)[WorkflowStatus.QUEUED] == 1
