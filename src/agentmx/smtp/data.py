"""Reading a DATA body with bounded memory, answering 552 above the size limit.

aiosmtpd 1.4.6 keeps every fragment of a line longer than its line limit until that line ends,
so a body sent as one endless line (no CRLF) was held in RAM whole: 100 MB pushed once grew the
server by about 100 MB, and the reply was 500 "line too long" instead of 552. Here a line over
the limit, and everything past the size limit, is counted and dropped as it arrives.
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


async def read_data(reader: asyncio.StreamReader, size_limit: int | None, line_limit: int) -> DataBody:
    """Read up to the terminating <CRLF>.<CRLF>; the reader's own limit bounds a single read."""
    lines: list[bytes] = []
    size = 0
    too_long = False
    in_long_line = False  # between fragments of a line longer than the reader's limit
    while True:
        try:
            line = await reader.readuntil(b"\r\n")
        except asyncio.LimitOverrunError as exc:
            # No CRLF within the limit: consume and drop this fragment, keep nothing of the line.
            size += len(await reader.read(exc.consumed))
            too_long, in_long_line = True, True
            lines.clear()
            continue
        if in_long_line:  # the end of an over-long line
            size += len(line)
            in_long_line = False
            continue
        if line == b".\r\n":
            break
        if line.startswith(b"."):  # RFC 5321 4.5.2 transparency
            line = line[1:]
        # The message's size (RFC 1870) leaves out the doubled dots: a message of exactly the
        # size a client declared with MAIL FROM SIZE= must not get a 552 here.
        size += len(line)
        if too_long or (size_limit and size > size_limit):
            lines.clear()
            continue
        if len(line) > line_limit:
            too_long = True
            lines.clear()
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
