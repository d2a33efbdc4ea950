"""monitoring rollups: closed days of runs, ledger rows, provider calls and steps, summed

Revision ID: 0014
Revises: 0008
Create Date: 2026-11-30 17:00:00

The monitoring page's sums over a year (the cost of a delivered video, credit usage and totals,
the provider and step panels' counts) read one row per day and group for the days nothing can
change any more, and the raw rows only for the rest (core.views.rollup). The rollups are filled
on read; nothing on a run's path writes them.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "rollup_days",
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("day", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rolled_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("kind", "day", name=op.f("pk_rollup_days")),
    )
    op.create_table(
        "rollup_run_days",
        sa.Column("id", _ID, nullable=False),
        sa.Column("day", sa.DateTime(timezone=True), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=True),
        sa.Column("model", sa.String(length=100), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("runs", sa.Integer(), nullable=False),
        sa.Column("reserved", sa.BigInteger(), nullable=False),
        sa.Column("refunded", sa.BigInteger(), nullable=False),
        sa.Column("released", sa.BigInteger(), nullable=False),
        sa.Column("net", sa.BigInteger(), nullable=False),
        sa.Column("usd", sa.Numeric(precision=16, scale=4), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollup_run_days")),
    )
    op.create_index("ix_rollup_run_days_day", "rollup_run_days", ["day"])
    op.create_table(
        "rollup_ledger_days",
        sa.Column("id", _ID, nullable=False),
        sa.Column("day", sa.DateTime(timezone=True), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("workflow_id_set", sa.Boolean(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=True),
        sa.Column("reserved", sa.BigInteger(), nullable=False),
        sa.Column("refunded", sa.BigInteger(), nullable=False),
        sa.Column("released", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollup_ledger_days")),
    )
    op.create_index("ix_rollup_ledger_days_day", "rollup_ledger_days", ["day"])
    op.create_table(
        "rollup_call_days",
        sa.Column("id", _ID, nullable=False),
        sa.Column("day", sa.DateTime(timezone=True), nullable=False),
        sa.Column("provider", sa.String(length=40), nullable=False),
        sa.Column("operation", sa.String(length=40), nullable=False),
        sa.Column("calls", sa.Integer(), nullable=False),
        sa.Column("first_attempts", sa.Integer(), nullable=False),
        sa.Column("retries", sa.Integer(), nullable=False),
        sa.Column("errors", sa.Integer(), nullable=False),
        sa.Column("transient", sa.Integer(), nullable=False),
        sa.Column("cost", sa.Numeric(precision=16, scale=4), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollup_call_days")),
    )
    op.create_index("ix_rollup_call_days_day", "rollup_call_days", ["day"])
    op.create_table(
        "rollup_step_days",
        sa.Column("id", _ID, nullable=False),
        sa.Column("day", sa.DateTime(timezone=True), nullable=False),
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("bin", sa.Integer(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("sum_ms", sa.BigInteger(), nullable=False),
        sa.Column("max_ms", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollup_step_days")),
    )
    op.create_index("ix_rollup_step_days_day", "rollup_step_days", ["day"])


def downgrade() -> None:
    op.drop_table("rollup_step_days")
    op.drop_table("rollup_call_days")
    op.drop_table("rollup_ledger_days")
    op.drop_table("rollup_run_days")
    op.drop_table("rollup_days")
