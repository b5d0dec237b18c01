"""smtp/data.py's bulk DATA reader against the line-at-a-time reader it replaced (kept here as the oracle).

Random bodies, biased to dots, bare CR and LF, terminators, long lines and a pipelined next
command, reach both through a real asyncio.StreamReader fed in random pieces, with small reader
limits so that lines are read in fragments. The outcome and the bytes left for the SMTP session
must be the same.
"""

from __future__ import annotations

import asyncio
import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st

from agentmx.smtp.data import S500_LINE_TOO_LONG, S552_TOO_MUCH_DATA, DataBody, _Body, read_data


async def oracle_read_data(
    reader: asyncio.StreamReader, size_limit: int | None, line_limit: int | None
) -> DataBody:
    """read_data as it was before the bulk reader (agentmx 44fed3e), one readuntil per line."""
    lines: list[bytes] = []
    size = 0
    too_long = False
    line_start = True
    while True:
        try:
            line = await reader.readuntil(b"\r\n")
            ended = True
        except asyncio.LimitOverrunError as exc:
            line = await reader.read(exc.consumed)
            ended = False
        if line_start:
            if line == b".\r\n":
                break
            if line.startswith(b"."):
                line = line[1:]
        line_start = ended
        size += len(line)
        if line_limit is not None and (not ended or len(line) > line_limit):
            too_long = True
        if too_long or (size_limit and size > size_limit):
            lines.clear()
            continue
        lines.append(line)
    if size_limit and size > size_limit:
        return DataBody(b"", S552_TOO_MUCH_DATA)
    if too_long:
        return DataBody(b"", S500_LINE_TOO_LONG)
    return DataBody(b"".join(lines))


async def _run(reader_fn, pieces: list[bytes], limit: int, size_limit, line_limit):  # type: ignore[no-untyped-def]
    reader = asyncio.StreamReader(limit=limit)

    async def feed() -> None:
        for piece in pieces:
            reader.feed_data(piece)
            await asyncio.sleep(0)  # let the reader see a partial buffer
        reader.feed_eof()

    feeder = asyncio.create_task(feed())
    outcome: object
    try:
        outcome = await reader_fn(reader, size_limit, line_limit)
    except asyncio.IncompleteReadError:
        outcome = "EOF before the terminator"
    await feeder
    return outcome, await reader.read()


def _both(stream: bytes, cuts: list[int], limit: int, size_limit, line_limit):  # type: ignore[no-untyped-def]
    bounds = [0, *sorted(c % (len(stream) + 1) for c in cuts), len(stream)]
    pieces = [stream[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]
    with asyncio.Runner() as runner:
        old = runner.run(_run(oracle_read_data, pieces, limit, size_limit, line_limit))
        new = runner.run(_run(read_data, pieces, limit, size_limit, line_limit))
    return old, new


TOKENS = [
    b".",
    b"..",
    b"\r",
    b"\n",
    b"\r\n",
    b"\r\n.",
    b".\r\n",
    b"\r\n.\r\n",
    b"\n.\n",
    b"\r.\r",
    b"a",
    b"Hi there",
]
token = st.one_of(
    st.sampled_from(TOKENS),
    st.binary(max_size=6),
    st.builds(lambda c, n: c * n, st.sampled_from([b"x", b".", b"\r"]), st.integers(10, 150)),
)
tail = st.sampled_from([b"", b"QUIT\r\n", b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n", b".\r\n", b"\r\n.\r\n"])


@settings(max_examples=1500, deadline=None)
@given(
    body=st.lists(token, max_size=40).map(b"".join),
    end=st.sampled_from([b"\r\n.\r\n", b".\r\n", b"", b"\n.\n"]),
    after=tail,
    cuts=st.lists(st.integers(0, 10_000), max_size=8),
    drip=st.one_of(st.none(), st.tuples(st.integers(1, 5), st.integers(0, 10_000))),
    limit=st.one_of(st.integers(16, 64), st.just(1001)),
    size_limit=st.one_of(st.none(), st.just(0), st.integers(0, 300)),
    line_room=st.one_of(st.none(), st.integers(0, 70)),
)
def test_bulk_reader_matches_line_reader(body, end, after, cuts, drip, limit, size_limit, line_room) -> None:  # type: ignore[no-untyped-def]
    # A line limit above the reader's limit + 1 is where the old reader refused any line it had to
    # read in fragments; agentmx sets none (None, or 1001 with the reader's limit at 1001).
    line_limit = None if line_room is None else max(1, limit + 1 - line_room)
    stream = body + end + after
    if drip:  # a stretch that arrives a few bytes at a time: the reader holds fewer than END could need
        size, span = drip
        cuts = [*cuts, *range(0, span % (len(stream) + 1), size)]
    old, new = _both(stream, cuts, limit, size_limit, line_limit)
    assert new == old


def _fixed(stream: bytes, limit: int = 1001, size_limit=None, line_limit=None):  # type: ignore[no-untyped-def]
    old, new = _both(stream, [], limit, size_limit, line_limit)
    assert new == old
    return new


def test_examples() -> None:
    assert _fixed(b".\r\nQUIT\r\n") == (DataBody(b""), b"QUIT\r\n")
    assert _fixed(b"\r\n.\r\n") == (DataBody(b"\r\n"), b"")
    assert _fixed(b"..x\r\n.\r\n..\r\n.\r\n") == (DataBody(b".x\r\n"), b"..\r\n.\r\n")
    assert _fixed(b"a\n.\nb\r\n.\r\n") == (DataBody(b"a\n.\nb\r\n"), b"")  # no smuggling on bare LF
    assert _fixed(b"a\r.\rb\r\n.\r\n") == (DataBody(b"a\r.\rb\r\n"), b"")
    assert _fixed(b"x" * 100 + b"\r\n.\r\n", limit=16) == (DataBody(b"x" * 100 + b"\r\n"), b"")
    assert _fixed(b"x" * 100 + b"\r\n.\r\n", limit=16, line_limit=17)[0].error == S500_LINE_TOO_LONG
    assert _fixed(b"x" * 100 + b"\r\n.\r\n", size_limit=50, line_limit=20)[0].error == S552_TOO_MUCH_DATA
    assert _fixed(b"abc", limit=16) == ("EOF before the terminator", b"")


def test_an_overlong_line_is_dropped_before_it_ends() -> None:
    """Bounded memory with a line limit and no size limit: an endless line is not held."""
    body = _Body(size_limit=None, line_limit=100)
    body.add(b"a\r\n" + b"x" * 99)
    assert not body.too_long
    body.add(b"x")
    assert body.too_long and not body.content


class CountingReader(asyncio.StreamReader):
    """A StreamReader that counts the reads asked of it."""

    reads = 0

    async def read(self, n: int = -1) -> bytes:
        self.reads += 1
        return await super().read(n)

    async def readexactly(self, n: int) -> bytes:
        self.reads += 1
        return await super().readexactly(n)

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        self.reads += 1
        return await super().readuntil(separator)


def test_a_body_of_empty_lines_is_read_in_bulk() -> None:
    """Empty lines from the body's start keep the stream's tail a partial END: read exactly what could
    complete it, they came 3 or 4 bytes at a time (10 MB, 19 s of CPU). Now reads take what arrived."""
    body = b"\r\n" * 100_000 + b"text\r\n"  # 200 kB
    stream = body + b".\r\nQUIT\r\n"

    async def read() -> tuple[DataBody, bytes, int]:
        reader = CountingReader(limit=1001)

        async def feed() -> None:
            for start in range(0, len(stream), 65536):  # as the network brings it
                reader.feed_data(stream[start : start + 65536])
                await asyncio.sleep(0)
            reader.feed_eof()

        feeder = asyncio.create_task(feed())
        outcome = await read_data(reader, None, None)
        reads = reader.reads
        await feeder
        return outcome, await reader.read(), reads

    outcome, rest, reads = asyncio.run(read())
    assert (outcome, rest) == (DataBody(body), b"QUIT\r\n")  # the pipelined command left for the session
    assert reads < 40  # 4 arrivals; it was 50,002


def test_a_body_of_short_lines_is_held_at_about_its_size() -> None:
    """Empty lines that arrive a few bytes at a time are read in 3- and 4-byte pieces: kept as one
    buffer, not as a list of objects, which held a 10 MB body of them in about 320 MB."""
    body = b"\r\n" * 25_000  # 50 kB
    stream = body + b".\r\n"

    async def read() -> tuple[DataBody, int]:
        reader = asyncio.StreamReader(limit=1001)

        async def feed() -> None:
            for start in range(0, len(stream), 3):
                reader.feed_data(stream[start : start + 3])
                await asyncio.sleep(0)

        tracemalloc.start()
        try:
            feeder = asyncio.create_task(feed())
            outcome = await read_data(reader, None, None)
            await feeder
            return outcome, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    outcome, peak = asyncio.run(read())
    assert outcome == DataBody(body)
    assert peak < 4 * len(body)
