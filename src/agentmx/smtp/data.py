"""Reading a DATA body with bounded memory, answering 552 above the size limit.

aiosmtpd 1.4.6 keeps every fragment of a line longer than its line limit until that line ends,
so a body sent as one endless line (no CRLF) was held in RAM whole: 100 MB pushed once grew the
server by about 100 MB, and the reply was 500 "line too long" instead of 552. Here a line over
the limit is read in fragments, and everything past the size limit is counted and dropped as it
arrives.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

S500_LINE_TOO_LONG = "500 5.5.2 Line too long (see RFC 5321 4.5.3.1.6)"
S552_TOO_MUCH_DATA = "552 5.3.4 Error: too much mail data"


@dataclass
class DataBody:
    content: bytes  # dot-unstuffed, CRLF line endings kept; empty when refused
    error: str | None = None  # the SMTP reply when the body is refused


async def read_data(reader: asyncio.StreamReader, size_limit: int | None, line_limit: int | None) -> DataBody:
    """Read up to the terminating <CRLF>.<CRLF>; the reader's own limit bounds a single read.

    ``line_limit``: a longer line (CRLF included) refuses the body with 500; None takes lines of
    any length within the size limit, as Postfix and other MXs do (RFC 5321 4.5.3.1.6 sets 1000
    octets, but a 500 after DATA bounces mail from senders that never wrap their HTML).
    """
    lines: list[bytes] = []
    size = 0
    too_long = False
    line_start = True  # False between fragments of a line longer than the reader's limit
    while True:
        try:
            line = await reader.readuntil(b"\r\n")
            ended = True
        except asyncio.LimitOverrunError as exc:
            # No CRLF within the limit: take this fragment (a CR at its end stays for the next read).
            line = await reader.read(exc.consumed)
            ended = False
        if line_start:  # a "." inside a long line neither ends the body nor is unstuffed
            if line == b".\r\n":
                break
            if line.startswith(b"."):  # RFC 5321 4.5.2 transparency
                line = line[1:]
        line_start = ended
        # The message's size (RFC 1870) leaves out the doubled dots: a message of exactly the
        # size a client declared with MAIL FROM SIZE= must not get a 552 here.
        size += len(line)
        if line_limit is not None and (not ended or len(line) > line_limit):
            too_long = True
        if too_long or (size_limit and size > size_limit):
            lines.clear()  # counted and dropped as it arrives
            continue
        lines.append(line)
    if size_limit and size > size_limit:
        return DataBody(b"", S552_TOO_MUCH_DATA)
    if too_long:
        return DataBody(b"", S500_LINE_TOO_LONG)
    return DataBody(b"".join(lines))


def body_of(envelope: Any) -> bytes:
    """An aiosmtpd envelope's message as bytes."""
    raw = envelope.original_content or envelope.content or b""
    return raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else raw
