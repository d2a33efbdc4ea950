"""still reuse: workflows.image_fingerprint/image_credits/reuse_image_from, and the priced calls

Revision ID: 0013
Revises: 0010
Create Date: 2026-11-30 14:00:00

A run records the fingerprint of its image request and the still's share of its price, so a
later run with the same request finds a still already paid for in one index probe and gives
that share back when it reuses it. The partial index on priced calls lets the monitoring page
sum the provider list price per run without reading the million unpriced calls.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PRICED = "cost_usd > 0"


def upgrade() -> None:
    with op.batch_alter_table("workflows") as batch:
        batch.add_column(
            sa.Column("image_credits", sa.Integer(), server_default="0", nullable=False)
        )
        batch.add_column(sa.Column("image_fingerprint", sa.String(length=64), nullable=True))
        # No foreign key: SQLite would rebuild workflows for it, which every table references.
        batch.add_column(sa.Column("reuse_image_from", sa.String(length=32), nullable=True))
        batch.create_index(
            "ix_workflows_user_fingerprint",
            ["user_id", "image_fingerprint", "created_at"],
            unique=False,
        )
    with op.batch_alter_table("api_calls") as batch:
        batch.create_index(
            "ix_api_calls_priced",
            ["started_at", "workflow_id", "cost_usd"],
            unique=False,
            postgresql_where=sa.text(_PRICED),
            sqlite_where=sa.text(_PRICED),
        )


def downgrade() -> None:
    with op.batch_alter_table("api_calls") as batch:
        batch.drop_index("ix_api_calls_priced")
    with op.batch_alter_table("workflows") as batch:
        batch.drop_index("ix_workflows_user_fingerprint")
        batch.drop_column("reuse_image_from")
        batch.drop_column("image_fingerprint")
        batch.drop_column("image_credits")
