"""Reading a DATA body with bounded memory, answering 552 above the size limit.

aiosmtpd 1.4.6 keeps every fragment of a line longer than its line limit until that line ends,
so a body sent as one endless line (no CRLF) was held in RAM whole: 100 MB pushed once grew the
server by about 100 MB, and the reply was 500 "line too long" instead of 552. Here the body is
read in bulk up to its terminator (what the reader holds, a line longer than its limit in pieces),
and everything past the size limit is counted and dropped as it arrives.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

S500_LINE_TOO_LONG = "500 5.5.2 Line too long (see RFC 5321 4.5.3.1.6)"
S552_TOO_MUCH_DATA = "552 5.3.4 Error: too much mail data"

# The end of the body: a line that is only "." (RFC 5321 4.1.1.4). Only CRLF ends a line, so
# "\n.\n" does not end it (SMTP smuggling). The body starts as if right after a CRLF.
END = b"\r\n.\r\n"


@dataclass
class DataBody:
    content: bytes  # dot-unstuffed, CRLF line endings kept; empty when refused
    error: str | None = None  # the SMTP reply when the body is refused


async def read_data(reader: asyncio.StreamReader, size_limit: int | None, line_limit: int | None) -> DataBody:
    """Read up to the terminating <CRLF>.<CRLF>; the reader's own limit bounds a single read.

    ``line_limit``: a longer line (CRLF included) refuses the body with 500; None takes lines of
    any length within the size limit, as Postfix and other MXs do (RFC 5321 4.5.3.1.6 sets 1000
    octets, but a 500 after DATA bounces mail from senders that never wrap their HTML).
    Bytes after the terminator (a pipelining client's next command) stay in the reader.
    """
    body = _Body(size_limit, line_limit)
    seen = b"\r\n"  # the stream's last bytes (up to END's length), the virtual CRLF before the body first
    held = b""  # a "." or ".\r" after a CRLF: the terminator's, if the next bytes complete it
    while True:
        if exact := _exact_read_size(reader, seen):
            piece = await reader.readexactly(exact)
        else:
            try:
                piece = await reader.readuntil(END)
            except asyncio.LimitOverrunError as exc:
                # No END within the limit: take what cannot be part of one (readuntil keeps the rest).
                piece = await reader.read(exc.consumed)
        # Every read stops at the first END: it can only end a piece.
        seen = (seen + piece)[-len(END) :]
        pending = held + piece
        if seen == END:
            body.add(pending[:-3])  # the CRLF before the "." is the last line's end
            return body.outcome()
        keep = max(0, _partial_end(seen) - 2)
        body.add(pending[: len(pending) - keep])
        held = pending[len(pending) - keep :]


def _exact_read_size(reader: asyncio.StreamReader, tail: bytes) -> int:
    """How many bytes to read exactly, not up to END, after ``tail``; 0 when readuntil(END) is safe.

    readuntil(END) cannot see an END that begins before what it reads: in the virtual CRLF before
    the body, or in bytes already read. When the tail could begin one, the reader's next bytes
    tell: with as many as END could still need, read exactly to the END they complete, or in
    bulk when they complete none. With fewer, read exactly what could complete END; reading more
    could take the pipelined command after the body. A body that begins with empty lines keeps the
    tail a partial END all along: exact reads alone took it 3 or 4 bytes at a time (10 MB, 19 s);
    now they happen only while the reader holds fewer than 4 bytes, a few per arrival.
    """
    matched = _partial_end(tail)
    if not matched:
        return 0
    ahead = _buffered(reader, len(END) - 1)
    if len(ahead) < len(END) - 1:
        return len(END) - matched
    found = (tail + ahead).find(END)  # the terminator, begun in the tail: 4 bytes ahead hold no END
    return 0 if found < 0 else found + len(END) - len(tail)


def _buffered(reader: asyncio.StreamReader, n: int) -> bytes:
    """Up to ``n`` of the bytes the reader holds, left in it; none if it does not show them.

    asyncio.StreamReader has no peek: this reads its ``_buffer`` (a bytearray since Python 3.4,
    cleared by aiosmtpd itself on STARTTLS) and nothing else. A reader without one gets exact
    reads, slower for short lines but right.
    """
    buffer = getattr(reader, "_buffer", None)
    return bytes(buffer[:n]) if isinstance(buffer, bytearray) else b""


def _partial_end(tail: bytes) -> int:
    """The length of the longest end of ``tail`` that begins END (0 to 4)."""
    for length in (4, 3, 2, 1):
        if tail.endswith(END[:length]):
            return length
    return 0


@dataclass
class _Body:
    """The body's pieces as read: dot-unstuffed, counted, line lengths checked, dropped past a limit."""

    size_limit: int | None
    line_limit: int | None
    # One buffer, not a list of pieces: a body that arrives a few bytes at a time comes in pieces of 3
    # or 4 bytes (_exact_read_size), and a list held about 50 bytes of objects for each: 10 MB, 320 MB.
    content: bytearray = field(default_factory=bytearray)
    size: int = 0  # RFC 1870: without the doubled dots
    too_long: bool = False
    before: bytes = b"\r\n"  # the two raw bytes before the next piece: does a "." begin a line?
    last: bytes = b""  # the last unstuffed byte: a CR that a LF at the next piece's start ends
    line_len: int = 0  # unstuffed bytes of the line not yet ended

    def add(self, raw: bytes) -> None:
        if not raw:
            return
        piece = self._unstuffed(raw)
        self.before = (self.before + raw[-2:])[-2:]
        if not piece:
            return
        # The message's size leaves out the doubled dots: a message of exactly the size a client
        # declared with MAIL FROM SIZE= must not get a 552 here.
        self.size += len(piece)
        if self.line_limit is not None and not self.too_long:
            self._check_lines(piece, self.line_limit)
        if self.too_long or (self.size_limit and self.size > self.size_limit):
            self.content.clear()  # counted and dropped as it arrives
            return
        self.content += piece

    def _unstuffed(self, raw: bytes) -> bytes:
        """RFC 5321 4.5.2 transparency: the "." that begins a line is dropped, no other.

        A "." after a bare LF or CR, or inside a line, stays. A line may begin at the piece's
        first or second byte, after a CRLF that ends the previous piece or straddles both.
        """
        if raw[:1] == b"." and self.before == b"\r\n":
            return raw[1:].replace(b"\r\n.", b"\r\n")
        if raw[:2] == b"\n." and self.before[-1:] == b"\r":
            return b"\n" + raw[2:].replace(b"\r\n.", b"\r\n")
        return raw.replace(b"\r\n.", b"\r\n")

    def _check_lines(self, piece: bytes, line_limit: int) -> None:
        """Whether a line (CRLF included, unstuffed) is longer than line_limit, a window at a time."""
        start, prefix = 0, self.line_len  # the line at start began with prefix bytes in earlier pieces
        if self.last == b"\r" and piece[:1] == b"\n":  # a CRLF across pieces ends that line
            if prefix + 1 > line_limit:
                self.too_long = True
                return
            start, prefix = 1, 0
        self.last = piece[-1:]
        while True:
            window_end = start + line_limit - prefix
            # The last CRLF ending within the window: every line up to it fits.
            crlf = piece.rfind(b"\r\n", start, window_end)
            if crlf < 0:
                if window_end <= len(piece):
                    self.too_long = True
                    return
                self.line_len = prefix + len(piece) - start
                break
            start, prefix = crlf + 2, 0
        # The open line will be at least one byte longer: refuse it now rather than hold it whole.
        self.too_long = self.line_len >= line_limit

    def outcome(self) -> DataBody:
        if self.size_limit and self.size > self.size_limit:
            return DataBody(b"", S552_TOO_MUCH_DATA)
        if self.too_long:
            return DataBody(b"", S500_LINE_TOO_LONG)
        return DataBody(bytes(self.content))


def body_of(envelope: Any) -> bytes:
    """An aiosmtpd envelope's message as bytes."""
    raw = envelope.original_content or envelope.content or b""
    return raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else raw
