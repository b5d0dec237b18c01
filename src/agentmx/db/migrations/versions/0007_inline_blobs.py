"""inline_blobs: small raw messages and attachments stored in the database

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "inline_blobs",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_inline_blobs")),
    )


def downgrade() -> None:
    # Rows of messages and attachments name these bytes; older versions look for them as files.
    stored = op.get_bind().execute(sa.text("SELECT count(*) FROM inline_blobs")).scalar()
    if stored:
        raise RuntimeError(
            f"inline_blobs holds {stored} blobs that stored messages name; a downgrade would lose them"
        )
    op.drop_table("inline_blobs")
