"""A message as a submission client sent it, made ready to send (RFC 6409 section 8).

Bcc fields are removed (the envelope carries those recipients; the stored copy keeps them apart),
and a missing Message-ID or Date is added, as a message submission agent does. So are the fields a
later hop writes, as the send API drops them: Return-Path (RFC 5321 4.4: the final delivery's) and
Authentication-Results (RFC 8601 5: a receiver's verdict, which recipients would read as ours).
"""

from __future__ import annotations

import re
from datetime import datetime
from email.utils import format_datetime

from agentmx.mail import header_fields

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_FIELD_START = re.compile(rb"^[^ \t\r\n]", re.MULTILINE)  # a line that does not continue a field


_REMOVED = (b"bcc", b"return-path", b"authentication-results")


def complete(raw: bytes, message_id: str, date: datetime) -> bytes:
    """``raw`` without Bcc, Return-Path and Authentication-Results fields, with Message-ID and Date
    fields when it had none."""
    end = _HEADER_END.search(raw)
    if end is None:  # header fields only
        head, rest = (raw if raw.endswith(b"\n") else raw + b"\r\n"), b""
    else:  # the head keeps its last line's line break; the rest starts with the empty line
        split = end.start() + (2 if raw[end.start() : end.start() + 2] == b"\r\n" else 1)
        head, rest = raw[:split], raw[split:]
    starts = [m.start() for m in _FIELD_START.finditer(head)] or [0]
    fields = [head[a:b] for a, b in zip(starts, [*starts[1:], len(head)], strict=True)]
    names = {field.split(b":", 1)[0].strip().lower() for field in fields}
    added = b""
    if b"message-id" not in names:
        added += b"Message-ID: " + message_id.encode() + b"\r\n"
    if b"date" not in names:
        added += b"Date: " + format_datetime(date).encode() + b"\r\n"
    kept = b"".join(field for field in fields if field.split(b":", 1)[0].strip().lower() not in _REMOVED)
    return added + kept + rest


# Fields naming who a message is from (RFC 5322 3.6.2 and 3.6.6).
ORIGINATOR_FIELDS = ("from", "sender", "resent-from", "resent-sender")


def originators(raw: bytes) -> tuple[int, list[str]]:
    """(how many From fields, every address of every originator field), read as the stored copy is."""
    fields = header_fields.parse(raw)
    try:
        addresses = header_fields.addresses(fields, *ORIGINATOR_FIELDS)
    except RecursionError:  # comments nested past the limit: an unreadable originator ("") is refused
        addresses = [""]
    return len(fields.get_all("from") or []), addresses
