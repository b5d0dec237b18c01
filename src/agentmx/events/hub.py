"""Live fan-out of the event log to this process's WebSocket streams.

The hub tails the ``events`` table by ``seq``. It wakes on a local commit (``rt.events_signal``), on
``NOTIFY agentmx_events`` from other processes (PostgreSQL), and on a slow poll as a safety net.
Each row is serialised once and queued to every stream of its organization; streams filter. Rows come
in batches (a transaction's, a log read's): an idle stream gets all of its share in one socket write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from sqlalchemy import func, select

from agentmx.db.models import Event
from agentmx.events.bodies import encode_body
from agentmx.events.ws_frame import FrameWriter, text_frame
from agentmx.failure_log import FailureLog
from agentmx.services.events import NOTIFY_CHANNEL, PROCESS_TOKEN, committed_listeners
from agentmx.services.runtime import Runtime

log = logging.getLogger("agentmx.events")

BATCH = 500
MAX_QUEUED = 5000  # a stream further behind than this catches up from the log instead
# The same in bytes of frame text: events are up to 1 MB each, and a client that stops reading holds
# its queue until it is disconnected (the keepalive ping, http/ws_frames.py), so 5,000 of them were GBs.
MAX_QUEUED_BYTES = 4 << 20
# Bytes of frames joined into one direct socket write (a bigger frame goes alone).
WRITE_CHUNK = 256 << 10


@dataclass(frozen=True)
class Item:
    """One event as streams see it: routing columns plus the frame text."""

    seq: int
    event_id: str
    event_type: str
    organization_id: str
    pod_id: str | None
    inbox_id: str | None
    text: str

    @classmethod
    def of(cls, row: Event) -> Item:
        return cls(
            seq=row.seq,
            event_id=row.event_id,
            event_type=row.event_type,
            organization_id=row.organization_id,
            pod_id=row.pod_id,
            inbox_id=row.inbox_id,
            # The webhook body, kept under 1 MB the same way: the SDK's socket (websockets' default
            # max_size, 1 MiB) closes on a bigger frame, and a resume would replay it into every retry.
            text=encode_body(row.body).decode(),
        )

    @cached_property
    def frame(self) -> bytes:
        return text_frame(self.text)


@dataclass(eq=False)
class Subscriber:
    organization_id: str
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    # The stream's current filter, checked here so streams are only woken for events they send.
    accepts: Callable[[Item], bool] | None = None
    # Set by the hub when the queue overflowed and events were dropped: the stream replays from the log.
    lagging: bool = False
    # Highest seq the stream has sent or skipped; a live event at or below it was replayed already.
    cursor: int = 0
    # Writes an event's frame straight to the socket (http/ws_frames.py), when the edge offers it.
    write: FrameWriter | None = None
    # The stream's task waits on an empty queue: nothing of its own is in flight.
    idle: bool = False
    # Length of the frame text of the events in the queue (the stream subtracts what it takes).
    queued_bytes: int = 0

    def drop_events(self) -> None:
        """Empty the queue of events, keeping client frames in order: the stream re-reads the log."""
        kept = []
        while not self.queue.empty():
            queued = self.queue.get_nowait()
            if not isinstance(queued, Item):
                kept.append(queued)
        for frame in kept:
            self.queue.put_nowait(frame)
        self.queued_bytes = 0


class Hub:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.last_seq = 0
        self.subscribers: dict[str, set[Subscriber]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def register(self, organization_id: str) -> Subscriber:
        sub = Subscriber(organization_id)
        self.subscribers.setdefault(organization_id, set()).add(sub)
        return sub

    def unregister(self, sub: Subscriber) -> None:
        subs = self.subscribers.get(sub.organization_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self.subscribers[sub.organization_id]

    async def start(self) -> None:
        async with self.rt.db.read() as s:
            self.last_seq = int(await s.scalar(select(func.max(Event.seq))) or 0)
        committed_listeners.append(self.offer)
        self._tasks.append(asyncio.create_task(self._tail(), name="event-hub"))
        if self.rt.listener is not None:  # PostgreSQL: commits in other processes wake the hub
            wake = self.rt.events_signal.notify
            # On (re)connect: catch up on anything committed while not listening.
            self.rt.listener.add(NOTIFY_CHANNEL, _other_process(wake), on_connect=wake)

    async def stop(self) -> None:
        if self.offer in committed_listeners:
            committed_listeners.remove(self.offer)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _tail(self) -> None:
        interval = self.rt.settings.event_poll_interval
        reads = FailureLog(log, "event hub read")
        while True:
            # Start waiting before reading, so a commit that lands mid-read still wakes the next round.
            waiter = asyncio.create_task(self.rt.events_signal.wait(interval))
            await asyncio.sleep(0)
            try:
                await self.pump()
                reads.succeeded()
            except Exception as exc:
                reads.failed(exc)
            await waiter

    async def pump(self) -> None:
        """Push every committed event after ``last_seq`` to the streams of its organization."""
        while True:
            async with self.rt.db.read() as s:
                rows = (
                    await s.scalars(
                        select(Event).where(Event.seq > self.last_seq).order_by(Event.seq).limit(BATCH)
                    )
                ).all()
            # offer() may have pushed some while we were reading
            self._push([row for row in rows if row.seq > self.last_seq])
            if len(rows) < BATCH:
                return

    def offer(self, rows: list[Event]) -> bool:
        """A transaction this process just committed: push its rows at once if they are next in the log."""
        fresh = sorted((row for row in rows if row.seq > self.last_seq), key=lambda row: row.seq)
        # Without a gap from the log (another process, a rolled-back id) up to the first, and between.
        following = 0
        while following < len(fresh) and fresh[following].seq == self.last_seq + 1 + following:
            following += 1
        self._push(fresh[:following])
        # Rows at or below last_seq were pushed already by a log read: nothing left to wake it for.
        return following == len(fresh)

    def _push(self, rows: list[Event]) -> None:
        """Fan out rows in seq order, all after ``last_seq``: each stream gets its share in one write."""
        by_org: dict[str, list[Item]] = {}
        try:
            for row in rows:
                self.last_seq = row.seq
                if row.organization_id in self.subscribers:
                    by_org.setdefault(row.organization_id, []).append(Item.of(row))
        finally:  # an event that cannot be encoded still leaves those before it sent
            for organization_id, items in by_org.items():
                self._fan_out(items, self.subscribers.get(organization_id, ()))

    def _fan_out(self, items: list[Item], subs: Iterable[Subscriber]) -> None:
        # Each test's answers, asked once: streams subscribed alike share one test (events/routes.py).
        wanted_by: dict[Callable[[Item], bool], Batch] = {}
        for sub in subs:
            accepts = sub.accepts
            if sub.lagging or accepts is None:
                continue
            wanted = wanted_by.get(accepts)
            if wanted is None:
                wanted = wanted_by[accepts] = Batch([item for item in items if accepts(item)])
            if wanted.items:
                _deliver(sub, wanted)


class Batch:
    """The events of a push that one test accepts, and their frames joined once for all its streams."""

    def __init__(self, items: list[Item]) -> None:
        self.items = items

    @cached_property
    def writes(self) -> list[tuple[bytes, int]]:
        return _joined(self.items)


def _joined(items: list[Item]) -> list[tuple[bytes, int]]:
    """Frames concatenated (each is self-delimiting on the wire), at most ``WRITE_CHUNK`` bytes a write
    unless one frame is bigger, each with its count of frames. The writer checks the transport's high-water
    mark before each write: a slow client's buffer grows by a chunk at most, the rest waits in its queue."""
    writes: list[tuple[bytes, int]] = []
    run: list[bytes] = []
    size = 0
    for item in items:
        frame = item.frame
        if run and size + len(frame) > WRITE_CHUNK:
            writes.append((b"".join(run), len(run)))
            run, size = [], 0
        run.append(frame)
        size += len(frame)
    if run:
        writes.append((b"".join(run), len(run)))
    return writes


def _deliver(sub: Subscriber, wanted: Batch) -> None:
    items = wanted.items
    if sub.idle and sub.write is not None and sub.queue.empty():
        # Written here, in order, without waking the stream's task: a thousand streams then cost a
        # thousand socket writes per push (all its events in one), not a thousand task switches.
        if items[0].seq <= sub.cursor:  # some were replayed from the log already
            items = [item for item in items if item.seq > sub.cursor]
            if not items:
                return
            writes = _joined(items)
        else:
            writes = wanted.writes
        sent = 0  # events written
        for chunk, frames in writes:
            try:
                written = sub.write(chunk)
            except Exception:  # a socket's error must not stop the fan-out or reach the commit
                log.exception("direct WebSocket write failed; the events go through the queue")
                written = False
            if not written:
                break
            sent += frames
        if sent:
            sub.cursor = items[sent - 1].seq
        items = items[sent:]
    for item in items:
        if sub.queue.qsize() >= MAX_QUEUED or sub.queued_bytes + len(item.text) > MAX_QUEUED_BYTES:
            # Behind: what it would send is in the log. This event stays only to wake the stream.
            sub.lagging = True
            sub.drop_events()
        sub.queued_bytes += len(item.text)
        sub.queue.put_nowait(item)
        if sub.lagging:
            return


def _other_process(wake: Callable[[], None]) -> Callable[[str], None]:
    """A NOTIFY handler that ignores this process's own commits.

    Those reach the hub at commit (``offer``, or ``events_signal`` when it cannot take a row);
    a log read per own commit would only find rows already pushed.
    """

    def listener(payload: str) -> None:
        if payload != PROCESS_TOKEN:
            wake()

    return listener


_hub: Hub | None = None


def current_hub() -> Hub | None:
    return _hub


async def start(rt: Runtime) -> Callable[[], Awaitable[None]]:
    """Background service (server.BACKGROUND)."""
    global _hub
    hub = Hub(rt)
    await hub.start()
    _hub = hub

    async def stop() -> None:
        global _hub
        _hub = None
        await hub.stop()

    return stop
