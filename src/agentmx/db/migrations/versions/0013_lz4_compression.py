"""lz4_compression: PostgreSQL compresses the large columns with lz4, not pglz

Each inbound message writes three values PostgreSQL compresses (its text, its raw bytes and its
event's body, about 14 KB for a 4 KB message); pglz took ~0.2 ms of the backend's CPU a message
(compression alone, measured with INSERTs of the bench's rows), lz4 about a fifth of that, and its
output was no larger. Only the column's method changes (no rewrite): values stored earlier stay
pglz and both are read as before. A server built without lz4 (or older than 14) keeps pglz.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

# The columns a message's size goes into (text, HTML, headers, raw bytes, event bodies).
LARGE_COLUMNS = {
    "messages": ("text", "html", "extracted_text", "extracted_html", "headers"),
    "events": ("body",),
    "inline_blobs": ("data",),
    "drafts": ("text", "html"),
}


def _set_compression(method: str) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    # Offered as a setting's value only by servers that have it (14+, built with lz4).
    lz4 = bind.execute(
        sa.text("SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'")
    ).scalar()
    if not lz4:
        return
    for table, columns in LARGE_COLUMNS.items():
        changes = ", ".join(f'ALTER COLUMN "{column}" SET COMPRESSION {method}' for column in columns)
        op.execute(f'ALTER TABLE "{table}" {changes}')


def upgrade() -> None:
    _set_compression("lz4")


def downgrade() -> None:
    _set_compression("default")
