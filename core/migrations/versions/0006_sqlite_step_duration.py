"""SQLite: workflow_steps.duration_ms no longer loses a second for a step started in the last
half millisecond of a second

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 11:30:00

strftime('%s', t) rounds t to the millisecond before taking whole seconds, so a start at
hh:mm:42.9996 counted as 43 s and such a step's duration came out 1000 ms short (negative for a
short step). The seconds are now taken from the text without its fraction. Postgres computes
the duration from the timestamps themselves and is unchanged. The column is generated, so
SQLite rebuilds the table and recomputes every row.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FRACTION = "(substr(finished_at, 21, 6) - substr(started_at, 21, 6))"
EXACT = (
    "CAST(round(((strftime('%s', substr(finished_at, 1, 19))"
    " - strftime('%s', substr(started_at, 1, 19))) * 1000000"
    f" + {_FRACTION}) / 1000.0) AS INTEGER)"
)
ROUNDED = (  # as 0003 created it
    "CAST(round(((strftime('%s', finished_at) - strftime('%s', started_at)) * 1000000"
    f" + {_FRACTION}) / 1000.0) AS INTEGER)"
)


def _rebuild(duration_sql: str) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table("workflow_steps", recreate="always") as batch_op:
        batch_op.drop_index("ix_workflow_steps_completed_duration")
        batch_op.drop_column("duration_ms")
    duration = sa.Column(
        "duration_ms", sa.Integer(), sa.Computed(sa.text(duration_sql), persisted=True)
    )
    with op.batch_alter_table("workflow_steps", recreate="always") as batch_op:
        batch_op.add_column(duration)
    with op.batch_alter_table("workflow_steps") as batch_op:
        batch_op.create_index(
            "ix_workflow_steps_completed_duration",
            ["name", "duration_ms", "started_at"],
            unique=False,
            sqlite_where=sa.text("status = 'completed'"),
        )


def upgrade() -> None:
    _rebuild(EXACT)


def downgrade() -> None:
    _rebuild(ROUNDED)
