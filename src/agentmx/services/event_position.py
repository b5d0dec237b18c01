"""Where a resumed read of the event log starts: the seq of an event id, looked up within the reader's scope.

An event of another pod or inbox is "not in the log" to a reader scoped elsewhere, exactly like an id
that never existed: otherwise a pod key could test which event ids exist in other pods, and start its
replay at their place in the log.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from agentmx.db.models import Event


async def seq_of(
    session: AsyncSession,
    event_id: str,
    *,
    organization_id: str,
    pod_id: str | None = None,
    inbox_id: str | None = None,
) -> int | None:
    stmt = select(Event.seq).where(Event.event_id == event_id, Event.organization_id == organization_id)
    if pod_id is not None:
        stmt = stmt.where(Event.pod_id == pod_id)
    if inbox_id is not None:
        stmt = stmt.where(Event.inbox_id == inbox_id)
    seq = await session.scalar(stmt)
    return None if seq is None else int(seq)
