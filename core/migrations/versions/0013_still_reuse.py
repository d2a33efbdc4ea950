"""still reuse and the cost of a delivered video: workflows.image_fingerprint, image_credits,
reuse_image_from and video_model, and an index of the priced calls

Revision ID: 0013
Revises: 0010
Create Date: 2026-11-30 14:00:00

A run records the fingerprint of its image request and the still's share of its price, so a
later run with the same request finds a still already paid for in one index probe and gives
that share back when it reuses it. For the monitoring page's cost of a delivered video: the
video model as a column (backfilled from the stored request), so grouping by model parses no
JSON, and a partial index of the priced calls, so the list price per run reads none of the
million unpriced ones.
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
        batch.add_column(sa.Column("video_model", sa.String(length=100), nullable=True))
        # No foreign key: SQLite would rebuild workflows for it, which every table references.
        batch.add_column(sa.Column("reuse_image_from", sa.String(length=32), nullable=True))
        batch.create_index(
            "ix_workflows_user_fingerprint",
            ["user_id", "image_fingerprint", "created_at"],
            unique=False,
        )
    _backfill_video_model()
    with op.batch_alter_table("api_calls") as batch:
        batch.create_index(
            "ix_api_calls_priced",
            ["started_at", "workflow_id", "cost_usd"],
            unique=False,
            postgresql_where=sa.text(_PRICED),
            sqlite_where=sa.text(_PRICED),
        )


def _backfill_video_model() -> None:
    """Runs made before this revision get their model from their stored request."""
    workflows = sa.table("workflows", sa.column("request", sa.JSON()), sa.column("video_model"))
    model = workflows.c.request["videoModel"].as_string()
    op.execute(workflows.update().where(model.is_not(None)).values(video_model=model))


def downgrade() -> None:
    with op.batch_alter_table("api_calls") as batch:
        batch.drop_index("ix_api_calls_priced")
    with op.batch_alter_table("workflows") as batch:
        batch.drop_index("ix_workflows_user_fingerprint")
        batch.drop_column("reuse_image_from")
        batch.drop_column("video_model")
        batch.drop_column("image_fingerprint")
        batch.drop_column("image_credits")
