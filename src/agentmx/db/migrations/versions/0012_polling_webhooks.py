"""polling_webhooks: subscriptions an agent reads with a token instead of receiving at a URL

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy import Text
from sqlalchemy.dialects import postgresql

import agentmx.db.types

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "polling_webhooks",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("organization_id", sa.String(length=64), nullable=False),
        sa.Column("pod_id", sa.String(length=64), nullable=True),
        sa.Column("inbox_id", sa.String(length=320), nullable=True),
        sa.Column("owner_scope", sa.String(length=320), nullable=False),
        sa.Column("event_types", JSON, nullable=False),
        sa.Column("pod_ids", JSON, nullable=False),
        sa.Column("inbox_ids", JSON, nullable=False),
        sa.Column("client_id", sa.String(length=256), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("start_seq", sa.BigInteger(), nullable=False),
        sa.Column("created_at", agentmx.db.types.UTCDateTime(), nullable=False),
        sa.Column("updated_at", agentmx.db.types.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_polling_webhooks")),
        sa.UniqueConstraint("owner_scope", "client_id", name="uq_polling_webhooks_owner_client_id"),
        sa.UniqueConstraint("token_hash", name=op.f("uq_polling_webhooks_token_hash")),
    )
    with op.batch_alter_table("polling_webhooks", schema=None) as batch_op:
        batch_op.create_index("ix_polling_webhooks_owner", ["owner_scope", "created_at"], unique=False)
        batch_op.create_index("ix_polling_webhooks_org", ["organization_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("polling_webhooks", schema=None) as batch_op:
        batch_op.drop_index("ix_polling_webhooks_org")
        batch_op.drop_index("ix_polling_webhooks_owner")
    op.drop_table("polling_webhooks")
