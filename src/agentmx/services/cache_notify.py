"""The per-process caches (``key_cache``, ``ingest_cache``) kept in step across processes.

A transaction that changes what they hold (an API key; an inbox, pod, organization, domain or list
entry) clears this process's caches and queues ``NOTIFY agentmx_caches``: PostgreSQL delivers it
when, and only if, the transaction commits, and every other process sharing the database clears
its own caches on receipt. So a key revoked through one process stops working on all of them at
once, not after the caches' seconds. Those seconds stay the fallback while a process's LISTEN
connection is down (it clears its caches on reconnecting). Mail never notifies: nothing on the
inbound path changes those rows.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from agentmx.db.engine import after_commit

if TYPE_CHECKING:
    from agentmx.services.runtime import Runtime

CHANNEL = "agentmx_caches"
PROCESS_TOKEN = secrets.token_hex(8)  # the payload: a process ignores its own notifications
_NOTIFIED = "agentmx_caches_notified"
_NOTIFY = "SELECT pg_notify($1, $2)"


def notify_at_commit(session: Session) -> None:
    """Queue the NOTIFY in the session's transaction (PostgreSQL), once per transaction."""
    if session.get_bind().dialect.name != "postgresql":
        return  # SQLite: one process
    connection = session.connection()  # begins the transaction if nothing has yet
    # Per savepoint too: a NOTIFY queued in a savepoint that rolls back is dropped with it.
    transaction = session.get_nested_transaction() or session.get_transaction()
    if session.info.get(_NOTIFIED) is transaction:
        return
    session.info[_NOTIFIED] = transaction
    connection.exec_driver_sql(_NOTIFY, (CHANNEL, PROCESS_TOKEN))


async def keys_changed(session: AsyncSession, rt: Runtime) -> None:
    """API keys change in this transaction: every process's key cache is cleared at its commit."""
    after_commit(session, rt.key_cache.clear)
    await session.run_sync(notify_at_commit)


def listen(rt: Runtime) -> None:
    """Clear this process's caches when another process's change commits, and on (re)connecting."""
    if rt.listener is None:
        return

    def changed(payload: str) -> None:
        if payload != PROCESS_TOKEN:
            rt.clear_caches()

    rt.listener.add(CHANNEL, changed, on_connect=rt.clear_caches)
