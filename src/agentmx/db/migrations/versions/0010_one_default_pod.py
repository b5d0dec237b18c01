"""one_default_pod: at most one default pod per organization

Two inbox creations at once after the default pod was deleted could each make one (PostgreSQL). A
partial unique index now refuses the second. Databases that already have several keep the oldest
as the default; the others become ordinary pods (same id, name and inboxes), so nothing is lost.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "UPDATE pods SET is_default = false WHERE is_default = true AND EXISTS ("
        "SELECT 1 FROM pods AS older WHERE older.organization_id = pods.organization_id "
        "AND older.is_default = true AND (older.created_at < pods.created_at "
        "OR (older.created_at = pods.created_at AND older.id < pods.id)))"
    )
    op.create_index(
        "uq_pods_org_default",
        "pods",
        ["organization_id"],
        unique=True,
        sqlite_where=sa.text("is_default"),
        postgresql_where=sa.text("is_default"),
    )


def downgrade() -> None:
    op.drop_index("uq_pods_org_default", table_name="pods")
