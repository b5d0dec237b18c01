"""orphan_list_entries: drop inbox list entries their inbox did not survive

Deleting an inbox left its own allow/block entries behind, and an inbox made later with the same
address (in any pod) found them in its lists. Entries older than the inbox now named by their
address, or whose inbox is gone, belonged to an inbox that was deleted.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "DELETE FROM list_entries WHERE inbox_id IS NOT NULL AND scope_id = inbox_id AND NOT EXISTS ("
        "SELECT 1 FROM inboxes WHERE inboxes.id = list_entries.inbox_id "
        "AND inboxes.created_at <= list_entries.created_at)"
    )


def downgrade() -> None:
    pass  # the entries belonged to no inbox; nothing to restore
