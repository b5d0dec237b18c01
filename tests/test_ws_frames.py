"""Pre-framed live events (events/ws_frame.py) and the hub's rule for writing them directly.

The end-to-end path (SDK clients, which negotiate permessage-deflate) is covered by
test_websocket.py and test_websocket_batches.py; these pin what a slow or busy stream must not break: order and no duplicates.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, cast

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from agentmx.blobs import BlobStore
from agentmx.db.engine import Database
from agentmx.db.models import Event
from agentmx.db.prepare import prepare
from agentmx.events.hub import MAX_QUEUED_BYTES, WRITE_CHUNK, Hub, Item, Subscriber
from agentmx.events.ws_frame import text_frame
from agentmx.services.events import record_event
from agentmx.services.runtime import Runtime
from agentmx.settings import Settings
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


def _frames(data: bytes) -> list[str]:
    """The text of each WebSocket frame in one socket write, parsed as a client parses them."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    texts = []
    while reader.buffer:  # (at_eof is a generator-based coroutine)
        parser = Frame.parse(reader.read_exact, mask=False)
        try:
            next(parser)
        except StopIteration as done:
            frame = cast(Frame, done.value)
        assert frame.fin and frame.opcode is Opcode.TEXT
        texts.append(frame.data.decode())
    return texts


def _subscriber(hub: Hub, accept_writes: list[bool]) -> tuple[Subscriber, list[list[int]]]:
    """An idle stream whose socket takes or refuses each write in turn; the seqs of each write taken."""
    writes: list[list[int]] = []
    sub = hub.register("org")
    sub.accepts = lambda item: True
    sub.idle = True

    def write(data: bytes) -> bool:
        if not accept_writes.pop(0):
            return False
        writes.append([json.loads(text)["seq"] for text in _frames(data)])
        return True

    sub.write = write
    return sub, writes


def _queued(sub: Subscriber) -> list[int]:
    out = []
    while not sub.queue.empty():
        out.append(cast(Item, sub.queue.get_nowait()).seq)
    return out


def test_idle_stream_gets_live_events_written_directly() -> None:
    async def main() -> None:
        hub = Hub(cast(Any, None))
        sub, writes = _subscriber(hub, [True, True, True])
        for seq in (1, 2, 3):
            assert hub.offer([event_row(seq)])
        assert writes == [[1], [2], [3]]
        assert sub.cursor == 3 and sub.queue.empty()

    asyncio.run(main())


def test_a_refused_write_queues_that_event_and_every_later_one() -> None:
    """Once an event waits in the queue, later ones queue behind it: the socket sees them in order."""

    async def main() -> None:
        hub = Hub(cast(Any, None))
        sub, writes = _subscriber(hub, [True, False, True, True])
        for seq in (1, 2, 3, 4):
            hub.offer([event_row(seq)])
        assert writes == [[1]]
        assert _queued(sub) == [2, 3, 4]

    asyncio.run(main())


def test_busy_stream_gets_events_through_its_queue() -> None:
    async def main() -> None:
        hub = Hub(cast(Any, None))
        sub, writes = _subscriber(hub, [True])
        sub.idle = False  # the stream's task is sending (a subscribe ack, a replay)
        hub.offer([event_row(1)])
        assert writes == [] and _queued(sub) == [1]

    asyncio.run(main())


def test_events_already_replayed_are_not_written_again() -> None:
    async def main() -> None:
        hub = Hub(cast(Any, None))
        sub, writes = _subscriber(hub, [True, True])
        sub.cursor = 2  # a replay from the log sent events up to seq 2
        for seq in (1, 2, 3):
            hub.offer([event_row(seq)])
        assert writes == [[3]] and sub.queue.empty()

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
        sub, writes = _subscriber(hub, [])
        sub.idle = False
        subscribe = object()
        sub.queue.put_nowait(subscribe)  # a client frame waiting its turn is kept
        for seq in range(1, 40):
            hub.offer([_big_event(seq, 500_000)])
        assert sub.lagging and writes == []
        assert sub.queued_bytes <= MAX_QUEUED_BYTES
        held = [sub.queue.get_nowait() for _ in range(sub.queue.qsize())]
        assert held[0] is subscribe
        assert sum(len(cast(Item, item).text) for item in held[1:]) <= MAX_QUEUED_BYTES

    asyncio.run(main())


def test_a_batch_reaches_each_idle_stream_in_one_write_with_its_share() -> None:
    """A group commit of 32 events cost 32 writes per stream: 32,000 for 1,000 streams. Now one each."""

    async def main() -> None:
        hub = Hub(cast(Any, None))
        everything, all_writes = _subscriber(hub, [True])
        asked: list[int] = []

        def takes_inbox_a(item: Item) -> bool:
            asked.append(item.seq)
            return item.inbox_id == "a@example.com"

        only_a = [_subscriber(hub, [True]) for _ in range(2)]
        for sub, _ in only_a:
            sub.accepts = takes_inbox_a
        inboxes = ["a@example.com", "b@example.com"]
        assert hub.offer([event_row(seq, inboxes[seq % 2]) for seq in range(1, 8)])
        assert all_writes == [[1, 2, 3, 4, 5, 6, 7]]
        for sub, writes in only_a:
            assert writes == [[2, 4, 6]]
            assert sub.cursor == 6 and sub.queue.empty()
        assert asked == [1, 2, 3, 4, 5, 6, 7]  # the shared test, once per event
        assert everything.cursor == 7 and hub.last_seq == 7

    asyncio.run(main())


def test_a_batch_is_written_in_chunks_and_a_refused_one_queues_the_rest() -> None:
    async def main() -> None:
        hub = Hub(cast(Any, None))
        sub, writes = _subscriber(hub, [True, False, True])
        big = WRITE_CHUNK // 2 + 1  # two do not fit in one write
        hub.offer([_big_event(seq, big) for seq in (1, 2, 3)])
        assert writes == [[1]]
        assert sub.cursor == 1 and _queued(sub) == [2, 3]

    asyncio.run(main())


def test_events_of_a_batch_already_replayed_are_not_written_again() -> None:
    async def main() -> None:
        hub = Hub(cast(Any, None))
        sub, writes = _subscriber(hub, [True])
        sub.cursor = 2
        hub.offer([event_row(seq) for seq in (1, 2, 3, 4)])
        assert writes == [[3, 4]] and sub.queue.empty()

    asyncio.run(main())


def test_offered_rows_a_log_read_pushed_already_need_no_other_read() -> None:
    """``False`` makes the commit wake the hub for a log read, which found nothing new."""

    async def main() -> None:
        hub = Hub(cast(Any, None))
        sub, writes = _subscriber(hub, [True])
        hub.last_seq = 5  # a log read pushed up to 5 while the transaction committed
        assert hub.offer([event_row(4), event_row(5)])
        assert writes == [] and hub.last_seq == 5

    asyncio.run(main())


def test_a_gap_inside_a_batch_leaves_the_rest_to_the_log_read() -> None:
    async def main() -> None:
        hub = Hub(cast(Any, None))
        sub, writes = _subscriber(hub, [True])
        assert not hub.offer([event_row(seq) for seq in (2, 1, 4)])  # and sorted by seq
        assert writes == [[1, 2]] and hub.last_seq == 2

    asyncio.run(main())


def test_a_batch_of_megabytes_for_a_busy_stream_keeps_only_a_wake_up_event() -> None:
    async def main() -> None:
        hub = Hub(cast(Any, None))
        sub, writes = _subscriber(hub, [])
        sub.idle = False
        hub.offer([_big_event(seq, 500_000) for seq in range(1, 40)])
        assert sub.lagging and writes == []
        assert sub.queued_bytes <= MAX_QUEUED_BYTES
        assert len(_queued(sub)) == 1  # the stream replays from the log: this one only wakes it
        hub.offer([_big_event(40, 10)])  # a lagging stream is not queued more
        assert sub.queue.empty()

    asyncio.run(main())


async def _record(rt: Runtime, count: int) -> list[str]:
    """``count`` events in one transaction, as an inbound group commit records them; their ids."""
    async with rt.db.transaction() as s:
        rows = [
            await record_event(
                s,
                rt,
                event_type="message.sent",
                organization_id="org",
                pod_id=None,
                inbox_id="a@example.com",
                payload={"send": {"inbox_id": "a@example.com", "n": n}},
            )
            for n in range(count)
        ]
    return [row.event_id for row in rows]


def test_a_transactions_events_reach_a_stream_in_one_write_from_the_log_and_at_commit(
    tmp_path: Path,
) -> None:
    """Both routes into the hub, on a real database: the log read (rows committed before it listened)
    and the commit (``offer``). Each wrote every event to every stream on its own: 5 writes, now one."""
    settings = Settings.model_validate({"data_dir": tmp_path / "data", "database_url": ""})
    prepare(settings)

    async def main() -> None:
        db = Database(settings.effective_database_url)
        rt = Runtime(settings=settings, db=db, blobs=BlobStore(settings.effective_blob_dir))
        hub = Hub(rt)
        writes: list[list[str]] = []
        sub = hub.register("org")
        sub.accepts = lambda item: True
        sub.idle = True

        def write(data: bytes) -> bool:
            writes.append([json.loads(text)["event_id"] for text in _frames(data)])
            return True

        sub.write = write
        try:
            logged = await _record(rt, 5)
            await hub.pump()
            assert writes == [logged]
            await hub.start()
            committed = await _record(rt, 5)
            assert writes == [logged, committed]
        finally:
            await hub.stop()
            await db.dispose()

    asyncio.run(main())
