"""monitoring: step duration column, indexes for a year of history; audit_events

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 12:00:00

workflow_steps.duration_ms is a generated (STORED) column: the database keeps it, writers never
set it. Postgres adds it with a table rewrite; SQLite cannot ALTER-add a STORED column, so the
table is rebuilt (batch "recreate").
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Whole milliseconds, rounded half away from zero from the exact timestamps (core.models).
DURATION_SQL = {
    "postgresql": "round(EXTRACT(epoch FROM finished_at - started_at) * 1000)",
    "sqlite": (
        "CAST(round(((strftime('%s', finished_at) - strftime('%s', started_at)) * 1000000"
        " + (substr(finished_at, 21, 6) - substr(started_at, 21, 6))) / 1000.0) AS INTEGER)"
    ),
}
COMPLETED = "status = 'completed'"
FAILED = "status = 'failed'"
NOT_OK = "outcome <> 'ok'"


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    duration = sa.Column(
        "duration_ms",
        sa.Integer(),
        sa.Computed(sa.text(DURATION_SQL[dialect]), persisted=True),
        nullable=True,
    )
    recreate = "always" if dialect == "sqlite" else "auto"
    with op.batch_alter_table("workflow_steps", recreate=recreate) as batch_op:
        batch_op.add_column(duration)
    with op.batch_alter_table("workflow_steps") as batch_op:
        batch_op.create_index("ix_workflow_steps_started_at", ["started_at"], unique=False)
        batch_op.create_index(
            "ix_workflow_steps_completed_duration",
            ["name", "duration_ms", "started_at"],
            unique=False,
            postgresql_where=sa.text(COMPLETED),
            sqlite_where=sa.text(COMPLETED),
        )
        batch_op.create_index(
            "ix_workflow_steps_failed",
            ["workflow_id", "name"],
            unique=False,
            postgresql_where=sa.text(FAILED),
            sqlite_where=sa.text(FAILED),
        )
    with op.batch_alter_table("api_calls") as batch_op:
        batch_op.create_index(
            "ix_api_calls_provider_operation_duration",
            ["provider", "operation", "duration_ms", "started_at"],
            unique=False,
            postgresql_include=["attempt", "outcome", "cost_usd"],
        )
        batch_op.create_index(
            "ix_api_calls_not_ok_started_at",
            ["started_at"],
            unique=False,
            postgresql_where=sa.text(NOT_OK),
            sqlite_where=sa.text(NOT_OK),
        )
    with op.batch_alter_table("credit_transactions") as batch_op:
        batch_op.create_index(
            "ix_credit_transactions_kind_created", ["kind", "created_at"], unique=False
        )
    if dialect == "postgresql":
        # Same key, now covering what the KPIs and outcomes read (INCLUDE is Postgres-only).
        op.drop_index("ix_workflows_created_at", table_name="workflows")
        op.create_index(
            "ix_workflows_created_at",
            "workflows",
            ["created_at"],
            unique=False,
            postgresql_include=["status", "started_at", "finished_at"],
        )

    op.create_table(
        "audit_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=320), nullable=False),
        sa.Column("action", sa.String(length=40), nullable=False),
        sa.Column("target", sa.String(length=200), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
    )
    with op.batch_alter_table("audit_events") as batch_op:
        batch_op.create_index("ix_audit_events_at", ["at"], unique=False)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("ix_workflows_created_at", table_name="workflows")
        op.create_index("ix_workflows_created_at", "workflows", ["created_at"], unique=False)
    with op.batch_alter_table("audit_events") as batch_op:
        batch_op.drop_index("ix_audit_events_at")
    op.drop_table("audit_events")
    with op.batch_alter_table("credit_transactions") as batch_op:
        batch_op.drop_index("ix_credit_transactions_kind_created")
    with op.batch_alter_table("api_calls") as batch_op:
        batch_op.drop_index("ix_api_calls_not_ok_started_at")
        batch_op.drop_index("ix_api_calls_provider_operation_duration")
    with op.batch_alter_table("workflow_steps") as batch_op:
        batch_op.drop_index("ix_workflow_steps_failed")
        batch_op.drop_index("ix_workflow_steps_completed_duration")
        batch_op.drop_index("ix_workflow_steps_started_at")
        batch_op.drop_column("duration_ms")
