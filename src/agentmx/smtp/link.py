"""The local link between the server process and its SMTP front-end processes.

A Unix socket pair; each frame is a 4-byte length and a MessagePack array of plain data: str,
bytes, numbers, None, arrays and maps. A front end parses mail from the network, and a bug there
must not become code run in, or memory taken from, the process that holds the database. Pickle was
used first: refusing every class it names stops code, but one 14-byte frame (a LONG_BINPUT with a
large index) still made the unpickler allocate gigabytes. MessagePack builds no objects, refuses
any length its buffer cannot hold, and ext types are refused here. The dataclasses a frame
carries travel as tagged arrays (``_to_plain``), rebuilt field by field on arrival.

Front end to server: ``("ready",)`` once listening, then requests ``(kind, request_id, ...)``:
``("rcpt", id, address, accepted)`` and ``("data", id, raw, mail_from, rcpt_tos, helo, peer, tls,
prepared)``. Server to front end: the settings first, then ``(request_id, reply)`` per request.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import msgpack

from agentmx.mail.parse import PARSE_IN_THREAD_BYTES, ParsedAttachment, ParsedMessage
from agentmx.mail.sender_auth import Verdict

HEADER = struct.Struct("!I")
# A message above this goes in a large frame (Outbox.send_large); below, frames are joined per turn.
# The size above which it is parsed off the loop, one parse per thread: large in both senses.
LARGE_MESSAGE_BYTES = PARSE_IN_THREAD_BYTES


@dataclass
class Prepared:
    """What a front end did ahead for DATA: the sender checks, the trace fields (with the checks'
    Authentication-Results) and the parse of trace + body.

    Valid only for exactly these recipients (the trace names a single one).
    """

    rcpt_tos: list[str]
    trace: bytes
    parsed: ParsedMessage
    sender: Verdict | None = None  # the sender checks' verdict, None when not checked


@dataclass
class RcptReply:
    reply: str
    return_path: bool = False  # the recipient is one of our return paths (DSNs for outbound mail)


class LinkClosed(ConnectionError):
    pass


def encode(value: tuple[Any, ...]) -> bytes:
    return framed(encode_body(value))


def framed(body: bytes) -> bytes:
    """A frame: ``body`` after its length."""
    return HEADER.pack(len(body)) + body


def encode_body(value: tuple[Any, ...]) -> bytes:
    """A frame without its length (``Outbox.send_large`` writes the two without joining them)."""
    # surrogatepass: parsed headers and bodies may hold lone surrogates (undecodable 8-bit bytes).
    return msgpack.packb([_to_plain(item) for item in value], unicode_errors="surrogatepass")


def _decode(body: bytes) -> Any:
    """Arrays come back as tuples, so a peer address is a tuple again; list fields are rebuilt."""
    return msgpack.unpackb(
        body, use_list=False, raw=False, unicode_errors="surrogatepass", ext_hook=_refuse_ext, timestamp=0
    )


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"MessagePack ext type {code} on the SMTP link")


# A frame's items of these types are sent as (tag, *fields).
_PREPARED, _RCPT_REPLY = "\0agentmx.Prepared", "\0agentmx.RcptReply"
_PARSED_FIELDS = tuple(f.name for f in fields(ParsedMessage))
_ATTACHMENT_FIELDS = tuple(f.name for f in fields(ParsedAttachment))
_LIST_FIELDS = ("to", "cc", "bcc", "reply_to", "references")
_EXTRACT_NAMES = (("extracted_text", "text"), ("extracted_html", "html"))
_BODY_STRIPPED = True  # in an extract's place: the body, stripped (quoted nothing)
_EXTRACT_FIELDS = tuple((_PARSED_FIELDS.index(e), _PARSED_FIELDS.index(b)) for e, b in _EXTRACT_NAMES)


def _to_plain(item: Any) -> Any:
    if isinstance(item, Prepared):
        sender = None if item.sender is None else (item.sender.verified, item.sender.spam)
        return (_PREPARED, item.rcpt_tos, item.trace, _parsed_to_plain(item.parsed), sender)
    if isinstance(item, RcptReply):
        return (_RCPT_REPLY, item.reply, item.return_path)
    return item


def _from_plain(item: Any) -> Any:
    if not isinstance(item, tuple) or not item:
        return item
    if item[0] == _PREPARED:
        _, rcpt_tos, trace, parsed, sender = item
        verdict = None if sender is None else Verdict(bool(sender[0]), bool(sender[1]))
        return Prepared(list(rcpt_tos), trace, _parsed_from_plain(parsed), verdict)
    if item[0] == _RCPT_REPLY:
        _, reply, return_path = item
        return RcptReply(reply, return_path)
    return item


def _parsed_to_plain(parsed: ParsedMessage) -> tuple[Any, ...]:
    values = [getattr(parsed, name) for name in _PARSED_FIELDS]
    # An extract that is its body stripped (most mail) goes as True, not as a second copy of the body.
    for extract, body in _EXTRACT_FIELDS:
        if values[body] is not None and values[extract] == values[body].strip():
            values[extract] = _BODY_STRIPPED
    values[_PARSED_FIELDS.index("date")] = parsed.date.isoformat() if parsed.date else None
    values[_PARSED_FIELDS.index("attachments")] = [
        tuple(getattr(a, name) for name in _ATTACHMENT_FIELDS) for a in parsed.attachments
    ]
    return tuple(values)


def _parsed_from_plain(values: tuple[Any, ...]) -> ParsedMessage:
    given = dict(zip(_PARSED_FIELDS, values, strict=True))
    for name in _LIST_FIELDS:
        given[name] = list(given[name])
    given["date"] = datetime.fromisoformat(given["date"]) if given["date"] else None
    given["attachments"] = [ParsedAttachment(*a) for a in given["attachments"]]
    given["headers"] = dict(given["headers"])
    for extract, body in _EXTRACT_NAMES:
        if given[extract] is _BODY_STRIPPED:
            given[extract] = given[body].strip() if isinstance(given[body], str) else None
    return ParsedMessage(**given)


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
        value = _decode(body)
        if not isinstance(value, tuple) or not value:
            raise ValueError("not a tuple")
        return tuple(_from_plain(item) for item in value)
    except Exception as exc:
        raise LinkClosed(f"unreadable frame on the SMTP link: {exc}") from exc


class Outbox:
    """Frames for one end of the link; those sent in one turn of the event loop go out in one write.

    A write is a system call and wakes the reader: the server answers a batch of stored messages at
    once, and a busy front end sends several sessions' requests within a turn.
    """

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._frames: list[bytes] = []
        self._loop = asyncio.get_running_loop()
        self._large_turn = asyncio.Lock()

    def send(self, frame: bytes) -> None:
        if not self._frames:
            self._loop.call_soon(self._flush)
        self._frames.append(frame)

    async def send_large(self, encode_body: Callable[[], bytes]) -> None:
        """A large frame, encoded only once the link has sent the previous one on to its reader.

        20 sessions sending 10 MB each at once, their frames (16 MB: the message and its parse) all
        encoded as soon as parsed, queued 4 of them behind a busy server. The length and the body
        go as two buffers: joining them copied the frame once more.
        """
        async with self._large_turn:
            body = encode_body()
            if not self._writer.is_closing():
                self._writer.writelines((HEADER.pack(len(body)), body))
            await self._writer.drain()  # below the transport's low-water mark: the reader has it

    def _flush(self) -> None:
        frames, self._frames = self._frames, []
        if not self._writer.is_closing():
            self._writer.writelines(frames)


def max_frame(message_size_limit: int) -> int:
    """A DATA request holds the body, the trace and its parse (text, html and attachments decoded)."""
    return 4 * message_size_limit + (1 << 20)
