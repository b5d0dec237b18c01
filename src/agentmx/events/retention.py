"""Optional pruning of the event log and webhook attempt records (AGENTMX_EVENT_RETENTION_DAYS)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta

from sqlalchemy import delete, func, select

from agentmx.db.models import Event, WebhookAttempt
from agentmx.db.types import utcnow
from agentmx.services.runtime import Runtime

log = logging.getLogger("agentmx.events")

INTERVAL = 3600.0  # seconds between prune runs
CHUNK = 5000  # rows per transaction, so writers are never held up for long


async def prune(rt: Runtime, days: float) -> int:
    """Delete events and attempt records older than ``days``; returns how many rows went."""
    cutoff = utcnow() - timedelta(days=days)
    removed = 0
    async with rt.db.read() as s:
        newest = await s.scalar(select(func.max(Event.seq)))
    for table, key, old in (
        # The newest event stays: SQLite numbers a new row after the largest rowid left, and with none
        # left the log would count again from 1, below positions readers have saved (polling
        # cursors, WebSocket resumes), and they would skip what comes next.
        (Event, Event.seq, (Event.created_at < cutoff) & (Event.seq < (newest or 0))),
        (WebhookAttempt, WebhookAttempt.id, WebhookAttempt.created_at < cutoff),
    ):
        while True:
            async with rt.db.transaction() as s:
                ids = list((await s.scalars(select(key).where(old).limit(CHUNK))).all())
                if ids:
                    await s.execute(delete(table).where(key.in_(ids)))
            removed += len(ids)
            if len(ids) < CHUNK:
                break
    return removed


async def start(rt: Runtime) -> Callable[[], Awaitable[None]]:
    """Background service: prune hourly when a retention is configured."""
    days = rt.settings.event_retention_days

    async def loop() -> None:
        while True:
            try:
                removed = await prune(rt, days)
                if removed:
                    log.info("pruned %d event log rows older than %s days", removed, days)
            except Exception:
                log.exception("event log pruning failed")
            await asyncio.sleep(INTERVAL)

    task = asyncio.create_task(loop(), name="event-retention") if days > 0 else None

    async def stop() -> None:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return stop
