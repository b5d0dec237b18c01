"""Loading what a webhook delivery needs: the webhook's URL, secret and headers, and the event body.

The job runner starts a claimed batch of deliveries in one loop tick; their lookups are gathered
here and answered with two queries for the whole batch (not a read transaction per delivery).
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import Row, bindparam, select

from agentmx.db.models import Event, Webhook
from agentmx.services.runtime import Runtime

Key = tuple[str, str]  # webhook_id, event_id

# Built once (no per-batch statement building); the IN lists expand at execution.
_HOOKS = select(
    Webhook.id, Webhook.url, Webhook.secret, Webhook.headers, Webhook.enabled, Webhook.updated_at
).where(Webhook.id.in_(bindparam("ids", expanding=True)))
_EVENTS = select(Event.event_id, Event.body).where(Event.event_id.in_(bindparam("ids", expanding=True)))

_fetching: set[asyncio.Task[None]] = set()
_waiting: dict[int, dict[Key, list[asyncio.Future[tuple[Row[Any], Any] | None]]]] = {}


async def load(rt: Runtime, webhook_id: str, event_id: str) -> tuple[Row[Any], Any] | None:
    """(webhook row, event body), or None when either is gone."""
    future: asyncio.Future[tuple[Row[Any], Any] | None] = asyncio.get_running_loop().create_future()
    batch = _waiting.get(id(rt))
    if batch is None:
        batch = _waiting[id(rt)] = {}
        # Runs after the tasks already scheduled for this loop turn have queued their keys too.
        task = asyncio.create_task(_fetch(rt))
        _fetching.add(task)
        task.add_done_callback(_fetching.discard)
    batch.setdefault((webhook_id, event_id), []).append(future)
    return await future


async def _fetch(rt: Runtime) -> None:
    batch = _waiting.pop(id(rt), {})
    try:
        async with rt.db.read_connection() as conn:  # Core: no ORM session
            hooks: dict[str, Any] = {
                row.id: row for row in await conn.execute(_HOOKS, {"ids": sorted({w for w, _ in batch})})
            }
            bodies = {
                row.event_id: row.body
                for row in await conn.execute(_EVENTS, {"ids": sorted({e for _, e in batch})})
            }
    except BaseException as exc:
        for futures in batch.values():
            for future in futures:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else RuntimeError(repr(exc)))
        if not isinstance(exc, Exception):
            raise
        return
    for (webhook_id, event_id), futures in batch.items():
        hook, found = hooks.get(webhook_id), event_id in bodies
        result = (hook, bodies[event_id]) if hook is not None and found else None
        for future in futures:
            if not future.done():
                future.set_result(result)
