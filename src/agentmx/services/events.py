"""Writing to the durable event log. Every event is written in the transaction of the fact it reports."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from agentmx.db.engine import after_commit
from agentmx.db.models import Event
from agentmx.ids import new_id
from agentmx.services.runtime import Runtime


async def record_event(
    session: AsyncSession,
    rt: Runtime,
    *,
    event_type: str,
    organization_id: str,
    pod_id: str | None,
    inbox_id: str | None,
    payload: dict[str, Any],
) -> Event:
    """Append an event. ``payload`` holds the payload keys (``message``, ``send``, ``domain`` …)."""
    event_id = new_id("evt")
    body = {"type": "event", "event_type": event_type, "event_id": event_id, **payload}
    row = Event(
        event_id=event_id,
        event_type=event_type,
        organization_id=organization_id,
        pod_id=pod_id,
        inbox_id=inbox_id,
        body=body,
    )
    session.add(row)
    after_commit(session, rt.events_signal.notify)
    return row
