"""orphans_of_deleted_pods: drop the keys, list entries and webhook listings of deleted pods

Deleting a pod left them behind (only a name, no foreign key): a deleted pod's key still
authenticated and managed its pod's other keys. Pod ids are never reused, so whatever names a pod
that is gone belonged to a deleted one. A webhook left following nothing is disabled, as a pod
deletion now does, rather than receiving every event of its organization.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from agentmx.db.types import JSONType

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

POD_GONE = "NOT EXISTS (SELECT 1 FROM pods WHERE pods.id = {table}.pod_id)"

webhooks = sa.table(
    "webhooks",
    sa.column("id", sa.String),
    sa.column("pod_ids", JSONType),
    sa.column("inbox_ids", JSONType),
    sa.column("enabled", sa.Boolean),
)


def upgrade() -> None:
    op.execute("DELETE FROM api_keys WHERE pod_id IS NOT NULL AND " + POD_GONE.format(table="api_keys"))
    op.execute(
        "DELETE FROM list_entries WHERE pod_id IS NOT NULL AND inbox_id IS NULL AND scope_id = pod_id AND "
        + POD_GONE.format(table="list_entries")
    )
    bind = op.get_bind()
    live = set(bind.scalars(sa.text("SELECT id FROM pods")))
    listing = bind.execute(sa.select(webhooks))
    for hook_id, pod_ids, inbox_ids, enabled in listing.all():
        left = [p for p in pod_ids or [] if p in live]
        if len(left) == len(pod_ids or []):
            continue
        still_following = bool(left or inbox_ids)
        bind.execute(
            webhooks.update()
            .where(webhooks.c.id == hook_id)
            .values(pod_ids=left, enabled=enabled and still_following)
        )


def downgrade() -> None:
    pass  # the rows belonged to no pod; nothing to restore
