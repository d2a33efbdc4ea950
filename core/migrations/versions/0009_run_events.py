"""run_events: each run's append-only event log, numbered per run, for the API's stream

Revision ID: 0009
Revises: 0013
Create Date: 2026-11-30 14:00:00

Runs from before this revision have no events (last_event_seq 0); their stream opens with a
`reset` carrying the run's state.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("workflows") as batch:
        batch.add_column(
            sa.Column("last_event_seq", sa.Integer(), server_default="0", nullable=False)
        )
    op.create_table(
        "run_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("workflow_id", sa.String(length=32), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["workflow_id"], ["workflows.id"], name=op.f("fk_run_events_workflow_id_workflows")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_run_events")),
        sa.UniqueConstraint("workflow_id", "seq", name=op.f("uq_run_events_workflow_id_seq")),
    )


def downgrade() -> None:
    op.drop_table("run_events")
    with op.batch_alter_table("workflows") as batch:
        batch.drop_column("last_event_seq")
