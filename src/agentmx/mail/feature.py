"""Mail feature wiring: the SMTP listeners (inbound, submission) and the blob collector as background
services, inbox cleanup of mail rows."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from agentmx import server
from agentmx.db.models import Inbox, Message, Thread
from agentmx.services import blob_gc, inboxes, messages
from agentmx.smtp import server as smtp_server
from agentmx.smtp import submission


async def delete_inbox_mail(session: AsyncSession, inbox: Inbox) -> None:
    """Delete explicitly rather than rely on FK cascades (message labels/attachments cascade from messages).

    Threads are locked before messages, in id order (messages.lock_threads_of): taken the other way
    round, a label change holding a thread and waiting for one of its messages deadlocked with this."""
    threads = select(Thread.id).where(Thread.inbox_id == inbox.id).order_by(Thread.id)
    await session.execute(threads.with_for_update())
    await messages.lock_for_deletion(session, Message.inbox_id == inbox.id)
    await session.execute(delete(Message).where(Message.inbox_id == inbox.id))
    await session.execute(delete(Thread).where(Thread.inbox_id == inbox.id))


server.BACKGROUND.append(smtp_server.start)
server.BACKGROUND.append(submission.start)
server.BACKGROUND.append(blob_gc.start)
inboxes.inbox_cleanup.append(delete_inbox_mail)
