"""The schema Alembic builds is the schema the models describe, on both databases."""

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, insert, select

from core.clock import utcnow
from core.db import alembic_config
from core.models import Base, User, Workflow, WorkflowStep


def test_migrations_produce_the_models_schema(db):
    with db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, Base.metadata)
    assert differences == []


def test_runs_ended_before_0005_keep_the_providers_cancel_answer(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    command.upgrade(alembic_config(url), "0003")
    engine = create_engine(url)
    now = utcnow()
    answers = {
        "confirmed": "cancelled by the user; the provider confirmed the cancellation",
        "refused": "ran past its budget; the provider did not confirm the cancellation",
        "no-job": "cancelled by the user",
    }
    with engine.begin() as connection:
        connection.execute(
            insert(User.__table__).values(
                id=1, email="a@example.com", display_name="a", role="user", balance=0,
                is_active=True, created_at=now,
            )
        )  # fmt: skip
        for run, message in answers.items():
            connection.execute(
                insert(Workflow.__table__).values(
                    id=run, user_id=1, client_key=run, status="cancelled", image_prompt="a",
                    video_prompt="b", request={}, cost_credits=1, cancel_requested=True,
                    recoveries=0, created_at=now,
                )
            )  # fmt: skip
            connection.execute(
                insert(WorkflowStep.__table__).values(
                    workflow_id=run, name="generate_video", position=3, status="cancelled",
                    progress=0, message=message, attempts=1, output={}, error_message=message,
                )
            )  # fmt: skip
    command.upgrade(alembic_config(url), "head")
    with engine.connect() as connection:
        rows = connection.execute(select(Workflow.id, Workflow.provider_cancel_confirmed))
        stored = {run: confirmed for run, confirmed in rows}
    engine.dispose()
    assert stored == {"confirmed": True, "refused": False, "no-job": None}
