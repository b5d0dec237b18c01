"""The per-inbox send limit (AGENTMX_INBOX_SEND_LIMIT_PER_HOUR): a runaway agent loop stops at so
many messages an hour instead of sending thousands and ruining its domain's reputation.

Counted from the database, so it holds across restarts and across processes sharing PostgreSQL:
the inbox's outbound messages of the last hour (every way of sending stores one, ``commit_send``),
read through ix_messages_inbox_ts, newest first, up to the limit-th (the one row read back). A message deleted
since no longer counts.
"""

from __future__ import annotations

import math
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from agentmx.db.models import Inbox, Message
from agentmx.db.row_locks import get_row
from agentmx.db.types import utcnow
from agentmx.errors import RateLimited
from agentmx.settings import Settings

WINDOW = timedelta(hours=1)


async def check(session: AsyncSession, settings: Settings, inbox_id: str, *, lock: bool = True) -> None:
    """RateLimited (retry_after: seconds until a send leaves the window) when the inbox has sent its
    limit in the last hour. Call it in the transaction that stores the send; ``lock=False`` before
    that, in a read, so that a send refused anyway composes, writes and fetches nothing."""
    limit = settings.inbox_send_limit_per_hour
    if not limit:
        return
    if lock:
        # PostgreSQL: concurrent sends of one inbox count one after the other, each seeing the last
        # one's message (SQLite's writers are one at a time already).
        await get_row(session, Inbox, inbox_id, lock="change")
    now = utcnow()
    # The limit-th newest send of the hour, if there is one: the next send may go once it is an hour old.
    nth = await session.scalar(
        select(Message.timestamp)
        .where(
            Message.inbox_id == inbox_id,
            Message.timestamp > now - WINDOW,
            Message.direction == "outbound",
        )
        .order_by(Message.timestamp.desc())
        .offset(limit - 1)
        .limit(1)
    )
    if nth is None:
        return
    wait = math.ceil((nth + WINDOW - now).total_seconds())
    raise RateLimited(
        f"Inbox {inbox_id} has sent {limit} messages in the last hour, its limit",
        retry_after=max(wait, 1),
        fix="Send again after Retry-After seconds, or raise AGENTMX_INBOX_SEND_LIMIT_PER_HOUR.",
    )
