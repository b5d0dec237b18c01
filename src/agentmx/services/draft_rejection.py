"""``message.rejected`` for a scheduled draft whose send was refused when its time came.

A send over the API is refused at once (403 ``message_rejected``) and the caller sees it; a scheduled
send has no caller waiting, so the refusal is reported as an event instead. No message exists: the
draft's id stands in for ``message_id`` (the draft stays, ``send_status="failed"``, readable by that
id), and for ``thread_id`` when the draft starts no thread. ``draft_id`` is added to say so plainly.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from agentmx.db.models import Draft
from agentmx.db.types import utcnow
from agentmx.services.events import record_event
from agentmx.services.runtime import Runtime
from agentmx.services.sending import iso


async def record_rejected_draft(session: AsyncSession, rt: Runtime, draft: Draft, reason: str) -> None:
    """Record the event in ``session``, the transaction that marks the draft failed."""
    await record_event(
        session,
        rt,
        event_type="message.rejected",
        organization_id=draft.organization_id,
        pod_id=draft.pod_id,
        inbox_id=draft.inbox_id,
        payload={
            "reject": {
                "inbox_id": draft.inbox_id,
                "thread_id": draft.thread_id or draft.id,
                "message_id": draft.id,
                "draft_id": draft.id,
                "timestamp": iso(utcnow()),
                "reason": reason,
            }
        },
    )
