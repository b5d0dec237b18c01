"""Row lock modes for ``session.get(..., with_for_update=...)``, and the one lock order.

PostgreSQL only: SQLite ignores them, its writers are serialised by BEGIN IMMEDIATE anyway.
Order: pod, inbox, then what belongs to the inbox (its drafts, threads, messages, webhooks). A
transaction that will lock a thread or a draft and then insert a message pins the inbox first
(``pin_inboxes``): the message's foreign key takes the same KEY SHARE lock on the inbox anyway, and
taken after the thread's lock it closed a cycle with an inbox deletion (inbox, then its threads).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal, TypeVar

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from agentmx.db.models import Inbox

RowLock = Literal["change", "pin", "delete"]
T = TypeVar("T")

FOR_UPDATE: dict[RowLock, dict[str, bool]] = {
    # FOR NO KEY UPDATE: a change computed from the row; rows referencing it are not held up.
    "change": {"key_share": True},
    # FOR KEY SHARE: this transaction adds a row belonging to it (key, list entry, webhook, inbox).
    # A concurrent "delete" waits for it and then sees that row, or went first and the row is gone.
    "pin": {"read": True, "key_share": True},
    # FOR UPDATE (no flags): deleting it, taken before its dependents are counted or removed.
    "delete": {},
}


async def get_row(session: AsyncSession, model: type[T], key: Any, lock: RowLock | None = None) -> T | None:
    """``session.get``, under ``lock`` when given: re-read from the database (an object already in the
    session would otherwise keep the values read before the lock)."""
    if lock is None:
        return await session.get(model, key)
    return await session.get(model, key, with_for_update=FOR_UPDATE[lock], populate_existing=True)


async def pin_inboxes(session: AsyncSession, inbox_ids: Iterable[str]) -> set[str]:
    """FOR KEY SHARE (the "pin" mode) on these inboxes, in id order (see the module's text); returns
    the ids still there (a deletion that held the lock may have removed some)."""
    ids = sorted(set(inbox_ids))
    if not ids:
        return set()
    found = await session.scalars(
        select(Inbox.id)
        .where(Inbox.id.in_(ids))
        .order_by(Inbox.id)
        .with_for_update(read=True, key_share=True)
    )
    return set(found.all())
