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

# Lines (each with its line end: CRLF, a bare CR or a bare LF, as the parser reads them), grouped in
# fields: a line, then the lines that continue it (they start with white space).
_FIELD = re.compile(rb"[^\r\n]*(?:\r\n|\r|\n|\Z)(?:[ \t][^\r\n]*(?:\r\n|\r|\n|\Z))*")
_NON_EMPTY_LINES = re.compile(rb"(?:[^\r\n]+(?:\r\n|\r|\n|\Z))*")

_REMOVED = (b"bcc", b"return-path", b"authentication-results")


def complete(raw: bytes, message_id: str, date: datetime) -> bytes:
    """``raw`` without Bcc, Return-Path and Authentication-Results fields, with Message-ID and Date
    fields when it had none.

    The header is the one the parser reads (``header_fields.parsed_head_end``): the stored copy's,
    and that of recipients who parse as it does. When it ends at a line that is no field rather
    than at an empty line, a reader that ends it only at an empty line reads on: up to that line,
    the removed fields go there too, and an empty line goes where the parser's header ends, so that
    every reader ends it there."""
    end = header_fields.parsed_head_end(raw)
    head, rest = raw[:end], raw[end:]
    if head and not head.endswith((b"\r", b"\n")):  # header fields only, the last line unended
        head += b"\r\n"
    fields = _fields(head)
    if fields and fields[0].startswith(b"From "):  # the mbox envelope line, no field: under the Received,
        fields = fields[1:]  # the parser makes it the body's first line when no field follows it
    if fields and fields[0][:1] in (b" ", b"\t"):  # continues no field: the parser drops it, and on
        fields = fields[1:]  # top of another (an added field, the Received) it would continue that one
    names = {_name(field) for field in fields}
    added = b""
    if b"message-id" not in names:
        added += b"Message-ID: " + message_id.encode() + b"\r\n"
    if b"date" not in names:
        added += b"Date: " + format_datetime(date).encode() + b"\r\n"
    kept = added + _without_removed(fields)
    if rest[:1] not in (b"", b"\r", b"\n"):  # no empty line: the header ended at a line that is no field
        loose = _NON_EMPTY_LINES.match(rest)
        loose_end = loose.end() if loose else 0
        rest = b"\r\n" + _joined(_without_removed(_fields(rest[:loose_end])), rest[loose_end:])
    return _joined(kept, rest)


def _fields(lines: bytes) -> list[bytes]:
    return [field for field in _FIELD.findall(lines) if field]  # the empty match at the end dropped


def _name(field: bytes) -> bytes:
    return field.split(b":", 1)[0].strip().lower()


def _without_removed(fields: list[bytes]) -> bytes:
    return b"".join(field for field in fields if _name(field) not in _REMOVED)


def _joined(head: bytes, rest: bytes) -> bytes:
    """``head`` then ``rest``; a bare CR ending ``head`` before a bare LF (an empty line once a field
    between them is removed) becomes CRLF, lest the two make one line end and the empty line go."""
    return head + b"\n" + rest if head.endswith(b"\r") and rest.startswith(b"\n") else head + rest


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
