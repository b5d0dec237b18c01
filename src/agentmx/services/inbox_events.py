"""The inbox label change log (GET /v0/inboxes/{inbox_id}/events).

Mail services call ``record_label_change`` whenever a label is added to or removed from a message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncSession

if TYPE_CHECKING:
    from agentmx.db.models import Message


async def record_label_change(session: AsyncSession, message: Message, label: str, added: bool) -> None:
    """Append a label.added / label.removed entry in the caller's transaction."""
    return None
