"""blob_gc: the bytes of deleted mail are deleted too

Triggers record the blob key of every deleted message, attachment and draft attachment in
blob_candidates (cascades included); indexes on blob_key answer "is it still named?"; and
inline_blobs.touched_at protects bytes a transaction has just stored again.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

NAMING_TABLES = ("messages", "attachments", "draft_attachments")

PG_FUNCTION = """
CREATE FUNCTION agentmx_blob_candidate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.blob_key IS NOT NULL THEN
        INSERT INTO blob_candidates (key) VALUES (OLD.blob_key) ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END
$$
"""


def upgrade() -> None:
    op.add_column(
        "inline_blobs", sa.Column("touched_at", sa.BigInteger(), server_default="0", nullable=False)
    )
    op.create_table(
        "blob_candidates",
        sa.Column("key", sa.String(length=256), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_blob_candidates")),
    )
    for table in NAMING_TABLES:
        op.create_index(f"ix_{table}_blob_key", table, ["blob_key"])
    # Small blobs of mail deleted before this version: looked at by the collector's first passes.
    # (Files of such mail stay: only deletions from now on name theirs.)
    op.execute(
        "INSERT INTO blob_candidates (key) SELECT b.key FROM inline_blobs b WHERE "
        + " AND ".join(f"NOT EXISTS (SELECT 1 FROM {t} WHERE {t}.blob_key = b.key)" for t in NAMING_TABLES)
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_FUNCTION)
        for table in NAMING_TABLES:
            op.execute(
                f"CREATE TRIGGER trg_{table}_blob_candidate AFTER DELETE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION agentmx_blob_candidate()"
            )
    else:  # SQLite fires these for rows its foreign-key cascades delete too
        for table in NAMING_TABLES:
            op.execute(
                f"CREATE TRIGGER trg_{table}_blob_candidate AFTER DELETE ON {table} "
                "WHEN OLD.blob_key IS NOT NULL "
                "BEGIN INSERT OR IGNORE INTO blob_candidates (key) VALUES (OLD.blob_key); END"
            )


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for table in NAMING_TABLES:
        op.execute(f"DROP TRIGGER trg_{table}_blob_candidate" + (f" ON {table}" if postgres else ""))
        op.drop_index(f"ix_{table}_blob_key", table_name=table)
    if postgres:
        op.execute("DROP FUNCTION agentmx_blob_candidate()")
    op.drop_table("blob_candidates")
    with op.batch_alter_table("inline_blobs") as batch:
        batch.drop_column("touched_at")
