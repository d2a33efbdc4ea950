"""duration buckets in the call and step rollups, for exact percentiles without a full scan

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-30 21:00:00

The provider and step rollups also count per duration bucket (core.views.rollup.duration_bucket),
so a percentile sums bucket counts to the bucket holding its rank and reads only that bucket's
rows. Their rows are deleted (with their rollup_days claims): the next reads roll those days up
again, with buckets.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLES = {"calls": "rollup_call_days", "steps": "rollup_step_days"}


def _forget() -> None:
    for kind, table in _TABLES.items():
        op.execute(f"DELETE FROM {table}")
        op.execute(f"DELETE FROM rollup_days WHERE kind = '{kind}'")


def upgrade() -> None:
    _forget()
    # SQLite adds no NOT NULL column without a default in place: it copies the (now empty)
    # table; Postgres adds it to the empty table.
    recreate = "always" if op.get_bind().dialect.name == "sqlite" else "auto"
    for table in _TABLES.values():
        with op.batch_alter_table(table, recreate=recreate) as batch_op:
            batch_op.add_column(sa.Column("bucket_ms", sa.Integer(), nullable=False))


def downgrade() -> None:
    _forget()
    for table in _TABLES.values():
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_column("bucket_ms")
