"""idempotency_keys: the API's Idempotency-Key, tied to its run for a limited window

Until now an API key lived in workflows.client_key (prefixed "api:"), unique for ever, so a key
could never start a second run. The keys move to their own table, which a start may take over
once the window has passed; the API's existing keys are carried over.

Revision ID: 0011
Revises: 0009
Create Date: 2026-11-30 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("workflow_id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_idempotency_keys_user_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["workflow_id"],
            ["workflows.id"],
            name=op.f("fk_idempotency_keys_workflow_id_workflows"),
        ),
        sa.PrimaryKeyConstraint("user_id", "key", name=op.f("pk_idempotency_keys")),
    )
    with op.batch_alter_table("idempotency_keys") as batch_op:
        batch_op.create_index(
            batch_op.f("ix_idempotency_keys_workflow_id"), ["workflow_id"], unique=False
        )
    op.execute(
        "INSERT INTO idempotency_keys (user_id, key, workflow_id, created_at) "
        "SELECT user_id, substr(client_key, 5), id, created_at FROM workflows "
        "WHERE client_key LIKE 'api:%'"
    )


def downgrade() -> None:
    op.drop_table("idempotency_keys")
