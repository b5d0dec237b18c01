"""Reading a polling webhook's events with its token: the event log in log order, from a cursor.

The log's seq order is commit order (services/events.py), so a reader that passes back each read's
``next_cursor`` (or the last ``event_id`` it got) misses no event and gets none twice. What a
subscription takes is decided exactly as for a push webhook (``webhooks.receives``), and each event
is the body a webhook would be POSTed (``events.bodies``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from agentmx.db.models import Event, PollingWebhook
from agentmx.events import hub as event_hub
from agentmx.events.bodies import encode_body
from agentmx.events.catalogue import effective_types
from agentmx.services import event_position
from agentmx.services.pagination import decode_token, encode_token
from agentmx.services.polling_webhooks import by_token
from agentmx.services.runtime import Runtime
from agentmx.services.validation import fail
from agentmx.services.webhooks import receives

CURSOR_KIND = "polling_events"
DEFAULT_LIMIT = 100
MAX_LIMIT = 500
MAX_WAIT = 30  # seconds a read may wait for an event when there is none
SCAN_BATCH = 500
# Log rows looked at per read: a narrow subscription in a busy organization still answers promptly
# (with has_more) instead of walking the whole log in one request.
MAX_SCAN = 5000
# Response budget: the event that would cross it is left for the next read (one always goes).
MAX_BYTES = 8_000_000
BODY_CHUNK = 16  # event bodies loaded per statement


@dataclass
class EventsPage:
    bodies: list[bytes]  # JSON event bodies, in log order
    next_cursor: str  # where the next read starts
    has_more: bool  # more of the log is waiting: read again at once


def _cursor(sub: PollingWebhook, seq: int) -> str:
    # Names its subscription: another's cursor would silently skip this one's events.
    return encode_token(CURSOR_KIND, [sub.id, seq])


async def start_position(
    session: AsyncSession, sub: PollingWebhook, *, cursor: str | None, after: str | None
) -> int:
    """The log seq a read starts after: a cursor, an event id, or the subscription's creation."""
    if cursor and after:
        raise fail("cursor", "give cursor or after, not both")
    position = sub.start_seq  # never before the subscription existed
    if cursor:
        owner, seq = decode_token(CURSOR_KIND, cursor, [str, int], param="cursor")
        if owner != sub.id:
            raise fail(
                "cursor", "this cursor belongs to another polling webhook; read without one to start over"
            )
        position = max(position, seq)
    elif after:
        seq = await event_position.seq_of(
            session, after, organization_id=sub.organization_id, pod_id=sub.pod_id, inbox_id=sub.inbox_id
        )
        if seq is None:
            raise fail("after", f"event {after!r} is not in the event log; read on with a cursor instead")
        position = max(position, seq)
    return position


async def read_page(session: AsyncSession, sub: PollingWebhook, position: int, limit: int) -> EventsPage:
    # The head is read first: every event at or below it has committed (or never will), so the
    # cursor may move up to it past events this subscription does not take, without skipping any.
    head = int(
        await session.scalar(select(func.max(Event.seq)).where(Event.organization_id == sub.organization_id))
        or 0
    )
    types = sorted(effective_types(sub.event_types))
    taken: list[int] = []
    at, scanned = position, 0
    while at < head and len(taken) < limit and scanned < MAX_SCAN:
        # Routing columns only: bodies are loaded for the events taken.
        routes: list[Any] = list(
            await session.execute(
                select(Event.seq, Event.event_type, Event.pod_id, Event.inbox_id)
                .where(
                    Event.organization_id == sub.organization_id,
                    Event.seq > at,
                    Event.seq <= head,
                    Event.event_type.in_(types),
                )
                .order_by(Event.seq)
                .limit(SCAN_BATCH)
            )
        )
        scanned += len(routes)
        for route in routes:
            at = route.seq
            if receives(sub, route):
                taken.append(route.seq)
                if len(taken) == limit:
                    break
        else:
            if len(routes) < SCAN_BATCH:
                at = head  # nothing else of these types up to the head
    return await _page(session, sub, taken, at, head)


async def _page(
    session: AsyncSession, sub: PollingWebhook, taken: list[int], at: int, head: int
) -> EventsPage:
    """The bodies of ``taken``, loaded a few at a time: a read holds about the response budget in
    memory, not ``limit`` bodies of any size."""
    bodies: list[bytes] = []
    size = last = 0
    for start in range(0, len(taken), BODY_CHUNK):
        chunk = taken[start : start + BODY_CHUNK]
        rows = await session.execute(select(Event.seq, Event.body).where(Event.seq.in_(chunk)))
        body_of = {seq: body for seq, body in rows}
        for seq in chunk:
            if seq not in body_of:
                continue  # pruned by retention since it was picked (reads see each commit)
            body = encode_body(body_of.pop(seq))
            if bodies and size + len(body) > MAX_BYTES:
                return EventsPage(bodies, _cursor(sub, last), True)
            bodies.append(body)
            size += len(body)
            last = seq
    return EventsPage(bodies, _cursor(sub, at), at < head)


@contextlib.contextmanager
def _watching(rt: Runtime, sub: PollingWebhook) -> Iterator[Callable[[float], Awaitable[None]] | None]:
    """While open, an event this subscription takes wakes the returned waiter (None: no live hub).

    Opened before the read, so an event committed between the read and the wait still wakes it.
    The process beginning to stop wakes it too: a waiting read must not hold up a graceful stop
    (the job claims handed back at SIGTERM wait for the HTTP server to finish).
    """
    hub = event_hub.current_hub()
    if hub is None:
        yield None
        return
    watcher = hub.register(sub.organization_id)
    watcher.accepts = lambda item: receives(sub, item)

    async def woken(timeout: float) -> None:
        waits = [asyncio.ensure_future(watcher.queue.get()), asyncio.ensure_future(rt.stopping.wait())]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()

    try:
        yield woken
    finally:
        hub.unregister(watcher)


async def subscription(rt: Runtime, token: str) -> PollingWebhook:
    """The polling webhook ``token`` reads, or 401: checked before any parameter, as an API key is."""
    async with rt.db.read() as s:
        return await by_token(s, token)


async def poll(
    rt: Runtime,
    sub: PollingWebhook,
    token: str,
    *,
    limit: int,
    cursor: str | None,
    after: str | None,
    wait: int,
) -> EventsPage:
    """One read of ``sub`` (found by ``token``, from ``subscription``); with ``wait``, an empty read
    waits up to that many seconds."""
    async with rt.db.read() as s:
        position = await start_position(s, sub, cursor=cursor, after=after)
    if rt.rate_limiter is not None:
        rt.rate_limiter.take(f"polling:{sub.id}", "This polling webhook token")
    with _watching(rt, sub) as woken:
        async with rt.db.read() as s:
            page = await read_page(s, sub, position, limit)
        if page.bodies or page.has_more or wait <= 0 or woken is None or rt.stopping.is_set():
            return page
        await woken(wait)
    async with rt.db.read() as s:
        sub = await by_token(s, token)  # deleted or re-issued while waiting: 401
        return await read_page(s, sub, position, limit)
