"""Pre-framed live events (events/ws_frame.py) and the hub's rule for writing them directly.

The end-to-end path (SDK clients, which negotiate permessage-deflate) is covered by
test_websocket.py; these pin what a slow or busy stream must not break: order and no duplicates.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from agentmx.db.models import Event
from agentmx.events.hub import MAX_QUEUED_BYTES, Hub, Item, Subscriber
from agentmx.events.ws_frame import text_frame
from events_support import event_row


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65_535, 65_536, 200_000])
def test_text_frame_parses_as_one_final_text_frame(size: int) -> None:
    text = ("é" * size)[:size]  # multi-byte UTF-8: the length is in bytes, not characters
    reader = StreamReader()
    reader.feed_data(text_frame(text))
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=False)
    try:
        next(parser)
    except StopIteration as done:
        frame = cast(Frame, done.value)
    assert frame.fin and frame.opcode is Opcode.TEXT and not frame.rsv1
    assert frame.data.decode() == text
    assert reader.at_eof()


def _subscriber(hub: Hub, accept_writes: list[bool]) -> tuple[Subscriber, list[int]]:
    """An idle stream whose socket takes or refuses each write in turn."""
    written: list[int] = []
    sub = hub.register("org")
    sub.accepts = lambda item: True
    sub.idle = True

    def write(frame: bytes) -> bool:
        if not accept_writes.pop(0):
            return False
        written.append(int(frame.rsplit(b":", 1)[1].rstrip(b"}")))
        return True

    sub.write = write
    return sub, written


def _queued(sub: Subscriber) -> list[int]:
    out = []
    while not sub.queue.empty():
        out.append(cast(Item, sub.queue.get_nowait()).seq)
    return out


def test_idle_stream_gets_live_events_written_directly() -> None:
    async def main() -> None:
        hub = Hub(cast(Any, None))
        sub, written = _subscriber(hub, [True, True, True])
        for seq in (1, 2, 3):
            assert hub.offer(event_row(seq))
        assert written == [1, 2, 3]
        assert sub.cursor == 3 and sub.queue.empty()

    asyncio.run(main())


def test_a_refused_write_queues_that_event_and_every_later_one() -> None:
    """Once an event waits in the queue, later ones queue behind it: the socket sees them in order."""

    async def main() -> None:
        hub = Hub(cast(Any, None))
        sub, written = _subscriber(hub, [True, False, True, True])
        for seq in (1, 2, 3, 4):
            hub.offer(event_row(seq))
        assert written == [1]
        assert _queued(sub) == [2, 3, 4]

    asyncio.run(main())


def test_busy_stream_gets_events_through_its_queue() -> None:
    async def main() -> None:
        hub = Hub(cast(Any, None))
        sub, written = _subscriber(hub, [True])
        sub.idle = False  # the stream's task is sending (a subscribe ack, a replay)
        hub.offer(event_row(1))
        assert written == [] and _queued(sub) == [1]

    asyncio.run(main())


def test_events_already_replayed_are_not_written_again() -> None:
    async def main() -> None:
        hub = Hub(cast(Any, None))
        sub, written = _subscriber(hub, [True, True])
        sub.cursor = 2  # a replay from the log sent events up to seq 2
        for seq in (1, 2, 3):
            hub.offer(event_row(seq))
        assert written == [3] and sub.queue.empty()

    asyncio.run(main())


def _big_event(seq: int, size: int) -> Event:
    event = event_row(seq)
    event.body = {"pad": "x" * size, "seq": seq}
    return event


def test_a_stream_behind_by_megabytes_keeps_only_a_wake_up_event() -> None:
    """A stream stuck sending (its client stopped reading) held every later event, up to 5,000 of up
    to 1 MB each: GBs. Past MAX_QUEUED_BYTES it catches up from the log instead, holding one event."""

    async def main() -> None:
        hub = Hub(cast(Any, None))
        sub, written = _subscriber(hub, [])
        sub.idle = False
        subscribe = object()
        sub.queue.put_nowait(subscribe)  # a client frame waiting its turn is kept
        for seq in range(1, 40):
            hub.offer(_big_event(seq, 500_000))
        assert sub.lagging and written == []
        assert sub.queued_bytes <= MAX_QUEUED_BYTES
        held = [sub.queue.get_nowait() for _ in range(sub.queue.qsize())]
        assert held[0] is subscribe
        assert sum(len(cast(Item, item).text) for item in held[1:]) <= MAX_QUEUED_BYTES

    asyncio.run(main())
