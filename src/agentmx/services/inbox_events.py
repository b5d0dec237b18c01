"""The inbox label change log (GET /v0/inboxes/{inbox_id}/events).

Mail services call ``record_label_change`` whenever a label is added to or removed from a message.
The log's integer key is the event_id, monotonic per database (clients project it to IMAP UIDs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from agentmx.db.models import InboxEvent
from agentmx.db.types import utcnow
from agentmx.services import inboxes
from agentmx.services.caller import Caller
from agentmx.services.events import PENDING_LABEL_CHANGES
from agentmx.services.pagination import Page, paginate

if TYPE_CHECKING:
    from agentmx.db.models import Message


async def record_label_change(session: AsyncSession, message: Message, label: str, added: bool) -> None:
    """Append a label.added / label.removed entry in the caller's transaction.

    Added at commit under the event lock (``events.PENDING_LABEL_CHANGES``): ids taken earlier could
    commit out of order on PostgreSQL, and a client syncing from the last id it saw skipped the late
    one."""
    now = utcnow()
    session.info.setdefault(PENDING_LABEL_CHANGES, []).append(
        InboxEvent(
            organization_id=message.organization_id,
            pod_id=message.pod_id,
            inbox_id=message.inbox_id,
            event_type="label.added" if added else "label.removed",
            message_id=message.message_id,
            label=label,
            event_at=now,
            created_at=now,
        )
    )


async def list_inbox_events(
    session: AsyncSession,
    caller: Caller,
    inbox_id: str,
    *,
    limit: int,
    page_token: str | None,
    ascending: bool,
) -> Page[InboxEvent]:
    inbox = await inboxes.get_inbox(session, caller, inbox_id)
    return await paginate(
        session,
        select(InboxEvent).where(InboxEvent.inbox_id == inbox.id),
        kind="inbox_events",
        columns=[InboxEvent.id],
        limit=limit,
        page_token=page_token,
        ascending=ascending,
    )
