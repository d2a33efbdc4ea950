"""The schema Alembic builds is the schema the models describe, and a database holding data at
any older revision upgrades to the newest with every row intact, on both databases."""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, MetaData, create_engine, insert, select

from core.clock import utcnow
from core.db import alembic_config, make_engine, scratch_database, upgrade_schema
from core.models import Base, IdempotencyKey, User, Workflow, WorkflowStep


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


def test_the_apis_idempotency_keys_before_0011_keep_their_runs(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    command.upgrade(alembic_config(url), "0007")
    engine = create_engine(url)
    now = utcnow()
    with engine.begin() as connection:
        connection.execute(
            insert(User.__table__).values(
                id=1, email="a@example.com", display_name="a", role="user", balance=0,
                is_active=True, created_at=now,
            )
        )  # fmt: skip
        for run, client_key in (("by-api", "api:nightly-7"), ("by-page", "a1b2c3")):
            connection.execute(
                insert(Workflow.__table__).values(
                    id=run, user_id=1, client_key=client_key, status="completed",
                    image_prompt="a", video_prompt="b", request={}, cost_credits=1,
                    cancel_requested=False, recoveries=0, created_at=now,
                )
            )  # fmt: skip
    command.upgrade(alembic_config(url), "head")
    with engine.connect() as connection:
        keys = connection.execute(
            select(IdempotencyKey.user_id, IdempotencyKey.key, IdempotencyKey.workflow_id)
        ).all()
    engine.dispose()
    assert keys == [(1, "nightly-7", "by-api")]


# -- upgrading a database that holds data -----------------------------------------------------

# Rollup tables a migration may empty (with their kind's rollup_days rows).
ROLLED_UP_AGAIN = {"rollup_call_days": "calls", "rollup_step_days": "steps"}
OLDER_REVISIONS = [
    r.revision
    for r in reversed(list(ScriptDirectory.from_config(alembic_config("")).walk_revisions()))
][:-1]


def sample_value(column: Column, chosen: dict[tuple[str, str], Any]) -> Any:
    """A value of the column's type; a foreign key takes the value its parent row was given."""
    for key in column.foreign_keys:
        return chosen[(key.column.table.name, key.column.name)]
    python_type = column.type.python_type
    samples = {
        int: 1,
        str: "sample",
        bool: True,
        float: 1.5,
        Decimal: Decimal("1.5"),
        datetime: datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        dict: {"kept": ["as", "json"]},
        object: {"kept": ["as", "json"]},  # JSON columns
    }
    return samples[python_type]


def fill_every_table(connection) -> None:
    """One row in every table of the schema as it stands, parents first."""
    schema = MetaData()
    schema.reflect(connection)
    chosen: dict[tuple[str, str], Any] = {}
    for table in schema.sorted_tables:
        if table.name == "alembic_version":
            continue
        row = {c.name: sample_value(c, chosen) for c in table.columns if c.computed is None}
        chosen.update({(table.name, name): value for name, value in row.items()})
        connection.execute(table.insert().values(row))


def every_row(connection) -> dict[str, list[dict[str, Any]]]:
    schema = MetaData()
    schema.reflect(connection)
    return {
        t.name: [dict(r._mapping) for r in connection.execute(select(t))]
        for t in schema.sorted_tables
        if t.name != "alembic_version"
    }


@contextmanager
def empty_database(kind: str, tmp_path: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
        return
    server = os.environ.get("TEST_DATABASE_URL")
    if not server:
        pytest.fail("Postgres variant selected without TEST_DATABASE_URL")
    with scratch_database(server, prefix="reelforge_upgrade") as url:
        yield url


@pytest.mark.parametrize("revision", OLDER_REVISIONS)
@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_upgrading_a_database_with_data_keeps_every_row(kind, revision, tmp_path):
    with empty_database(kind, tmp_path) as url:
        command.upgrade(alembic_config(url), revision)
        engine = make_engine(url)
        with engine.begin() as connection:
            fill_every_table(connection)
        with engine.connect() as connection:
            before = every_row(connection)
        engine.dispose()

        upgrade_schema(url)

        engine = make_engine(url)
        with engine.connect() as connection:
            after = every_row(connection)
            assert connection.exec_driver_sql(
                "SELECT version_num FROM alembic_version"
            ).scalar() == (ScriptDirectory.from_config(alembic_config(url)).get_current_head())
        engine.dispose()
    assert all(before.values()), "every table of the old schema got a row"
    for table, rows in before.items():
        kept = [{name: row[name] for name in rows[0]} for row in after[table]]
        if table in ROLLED_UP_AGAIN and not kept:
            # Sums of raw rows, dropped with their days' claims: the next reads roll them up
            # again (0016 added a column their old rows cannot fill).
            claims = [r for r in after["rollup_days"] if r["kind"] == ROLLED_UP_AGAIN[table]]
            assert claims == [], table
            continue
        assert kept == rows, table
