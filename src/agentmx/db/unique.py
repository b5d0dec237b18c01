"""Flushing new rows that a unique constraint may refuse, without losing the transaction."""

from __future__ import annotations

from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession


async def flush_unless_taken(session: AsyncSession, row: Any) -> bool:
    """Add and flush ``row`` in a savepoint; False when a constraint refused it.

    The check before an insert cannot see a row another transaction has not committed yet (a retry
    racing its original request): the constraint is what settles it, and the caller then finds the
    row that won (same ``client_id``) or says which name is taken. The row is added inside the
    savepoint so that its rollback forgets it: added before, it stayed pending, the next query's
    autoflush inserted it again and that failure ended the whole transaction.
    """
    try:
        async with session.begin_nested():
            session.add(row)
            await session.flush()
    except IntegrityError:
        return False
    return True
