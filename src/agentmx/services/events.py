"""Writing to the durable event log. Every event is written in the transaction of the fact it reports.

Fan-out happens here, in that same transaction: one ``deliver_webhook`` job per matching enabled
webhook (exactly once, durable across restarts), and a wake-up for live WebSocket streams after
commit (``rt.events_signal`` in this process, ``NOTIFY agentmx_events`` for the others).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from agentmx.db.engine import after_commit
from agentmx.db.models import Event, Webhook
from agentmx.db.types import utcnow
from agentmx.ids import new_id
from agentmx.services.jobs import enqueue
from agentmx.services.runtime import Runtime
from agentmx.services.webhooks import matches

NOTIFY_CHANNEL = "agentmx_events"
# Serialises event writers on PostgreSQL from insert to commit, so seq order is commit order and
# a reader tailing "seq > last seen" never skips a row that commits late.
EVENT_LOCK_KEY = 0x61676D78  # "agmx"


def retry_schedule(rt: Runtime) -> list[float]:
    """Seconds before each webhook attempt (attempt 0 = first delivery)."""
    out = [float(part) for part in rt.settings.webhook_retry_schedule.split(",") if part.strip()]
    return out or [0.0]


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
        created_at=utcnow(),
    )
    postgres = not rt.db.is_sqlite
    if postgres:
        await session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": EVENT_LOCK_KEY})
    session.add(row)
    await session.flush()
    if postgres:
        # Delivered by PostgreSQL only if and when this transaction commits.
        await session.execute(text("SELECT pg_notify(:c, '')"), {"c": NOTIFY_CHANNEL})
    hooks = (
        await session.scalars(
            select(Webhook).where(Webhook.organization_id == organization_id, Webhook.enabled.is_(True))
        )
    ).all()
    first = utcnow() + timedelta(seconds=retry_schedule(rt)[0])
    for hook in hooks:
        if matches(hook, row):
            await enqueue(
                session,
                rt,
                "deliver_webhook",
                {"webhook_id": hook.id, "event_id": event_id},
                run_at=first,
                key=f"webhook:{hook.id}:{event_id}",
            )
    after_commit(session, rt.events_signal.notify)
    return row
