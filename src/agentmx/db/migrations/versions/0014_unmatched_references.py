"""unmatched_references: the Message-IDs a stored reply named that its inbox did not have yet

A reply stored before the message it answers (greylisting, a slow MTA, a backup MX) started a thread
of its own, and the original, arriving later, another. With this table the original finds the
thread of the replies waiting for it (services/inbound_batch, services/mailstore).

No backfill: finding the replies stored before the upgrade whose originals are still missing means
reading every message's References; only an original arriving after the upgrade for a reply stored
before it still starts a thread of its own.

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "unmatched_references",
        sa.Column("inbox_id", sa.String(length=320), nullable=False),
        sa.Column("message_id", sa.String(length=998), nullable=False),
        sa.Column("message_pk", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["message_pk"],
            ["messages.id"],
            name=op.f("fk_unmatched_references_message_pk_messages"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("inbox_id", "message_id", "message_pk", name=op.f("pk_unmatched_references")),
    )
    with op.batch_alter_table("unmatched_references", schema=None) as batch_op:
        batch_op.create_index("ix_unmatched_references_message", ["message_pk"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("unmatched_references", schema=None) as batch_op:
        batch_op.drop_index("ix_unmatched_references_message")
    op.drop_table("unmatched_references")
