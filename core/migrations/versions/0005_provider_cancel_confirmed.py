"""workflows.provider_cancel_confirmed: the video provider's answer to a cancel, as a column

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 11:00:00

Until now the answer travelled only inside the failed step's error text. Runs ended before this
revision get the column from that text, so their receipts keep saying what the provider answered.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The words the pipeline appended to the error text before this revision, and what they meant.
_VERDICTS = {
    "%the provider confirmed the cancellation%": True,
    "%the provider did not confirm the cancellation%": False,
}


def upgrade() -> None:
    with op.batch_alter_table("workflows") as batch:
        batch.add_column(sa.Column("provider_cancel_confirmed", sa.Boolean(), nullable=True))
    workflows = sa.table(
        "workflows", sa.column("id"), sa.column("provider_cancel_confirmed", sa.Boolean())
    )
    steps = sa.table("workflow_steps", sa.column("workflow_id"), sa.column("error_message"))
    for pattern, confirmed in _VERDICTS.items():
        said = sa.select(steps.c.workflow_id).where(steps.c.error_message.like(pattern))
        op.execute(
            workflows.update()
            .where(workflows.c.id.in_(said))
            .values(provider_cancel_confirmed=confirmed)
        )


def downgrade() -> None:
    with op.batch_alter_table("workflows") as batch:
        batch.drop_column("provider_cancel_confirmed")
