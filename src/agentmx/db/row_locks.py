"""Row lock modes for ``session.get(..., with_for_update=...)``.

PostgreSQL only: SQLite ignores them, its writers are serialised by BEGIN IMMEDIATE anyway.
"""

from __future__ import annotations

from typing import Literal

RowLock = Literal["change", "pin", "delete"]

FOR_UPDATE: dict[RowLock, dict[str, bool]] = {
    # FOR NO KEY UPDATE: a change computed from the row; rows referencing it are not held up.
    "change": {"key_share": True},
    # FOR KEY SHARE: this transaction adds a row belonging to it (key, list entry, webhook, inbox).
    # A concurrent "delete" waits for it and then sees that row, or went first and the row is gone.
    "pin": {"read": True, "key_share": True},
    # FOR UPDATE (no flags): deleting it, taken before its dependents are counted or removed.
    "delete": {},
}
