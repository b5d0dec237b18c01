"""The local link between the server process and its SMTP front-end processes.

A Unix socket pair; each frame is a 4-byte length and a pickled tuple. The server unpickles only
the types a front end sends (``SafeUnpickler``): a front end parses mail from the network, and a
bug there must not become code run in the process that holds the database.

Front end to server: ``("ready",)`` once listening, then requests ``(kind, request_id, ...)``:
``("rcpt", id, address, accepted)`` and ``("data", id, raw, mail_from, rcpt_tos, helo, peer,
prepared)``. Server to front end: the settings first, then ``(request_id, reply)`` per request.
"""

from __future__ import annotations

import asyncio
import io
import pickle
import struct
from dataclasses import dataclass
from typing import Any

from agentmx.mail.parse import ParsedMessage

HEADER = struct.Struct("!I")


@dataclass
class Prepared:
    """What a front end did ahead for DATA: the trace fields and the parse of trace + body.

    Valid only for exactly these recipients (the trace names a single one).
    """

    rcpt_tos: list[str]
    trace: bytes
    parsed: ParsedMessage


@dataclass
class RcptReply:
    reply: str
    return_path: bool = False  # the recipient is one of our return paths (DSNs for outbound mail)


_ALLOWED = {
    ("agentmx.mail.parse", "ParsedMessage"),
    ("agentmx.mail.parse", "ParsedAttachment"),
    ("agentmx.smtp.link", "Prepared"),
    ("agentmx.smtp.link", "RcptReply"),
    ("datetime", "datetime"),
    ("datetime", "timezone"),
    ("datetime", "timedelta"),
}


class SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not expected on the SMTP link")
        return super().find_class(module, name)


class LinkClosed(ConnectionError):
    pass


def encode(value: tuple[Any, ...]) -> bytes:
    body = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(body)) + body


async def read(reader: asyncio.StreamReader, max_frame: int) -> tuple[Any, ...]:
    """The next frame; LinkClosed at the end of the stream or on a frame that cannot be right."""
    try:
        (size,) = HEADER.unpack(await reader.readexactly(HEADER.size))
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        raise LinkClosed("SMTP link closed") from exc
    if size > max_frame:
        raise LinkClosed(f"frame of {size} bytes on the SMTP link (limit {max_frame})")
    try:
        body = await reader.readexactly(size)
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        raise LinkClosed("SMTP link closed") from exc
    try:
        value = SafeUnpickler(io.BytesIO(body)).load()
    except Exception as exc:
        raise LinkClosed(f"unreadable frame on the SMTP link: {exc}") from exc
    if not isinstance(value, tuple) or not value:
        raise LinkClosed("unexpected frame on the SMTP link")
    return value


def max_frame(message_size_limit: int) -> int:
    """A DATA request holds the body, the trace and its parse (text, html and attachments decoded)."""
    return 4 * message_size_limit + (1 << 20)
