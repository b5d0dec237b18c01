"""A plain message read without the email package: one text/plain part, 7- or 8-bit, under a header
of printable ASCII fields (no encoded words) whose address fields are simple mailboxes.

The stdlib's parse of a 4 KB message costs ~150 us, mostly generic lookups (each ``Message.get``
walks every field, lower-casing each name) and the structured address parser. Here the common case
is read with a few regular expressions and gives what the stdlib's parse gives for it; any other
message gives None and takes the whole parse (``mail/parse.py``), which the tests keep as the
oracle (``tests/test_plain_message.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agentmx.mail.policy import memo_default

# The header: field lines (a name, a colon, printable ASCII or tabs), each maybe continued on lines
# that start with white space, every line ended by CRLF. The stdlib's parser reads such lines as
# exactly these fields, without a defect; a bare CR or LF, 8-bit bytes, a Unix From line or a line
# that is no field take the whole parse.
_HEADER = re.compile(rb"(?:[\x21-\x39\x3b-\x7e]++:[\t\x20-\x7e]*+\r\n(?:[\t ][\t\x20-\x7e]*+\r\n)*+)++")

_TEXT_PLAIN = re.compile(r'text/plain(?:; ?charset=(?:([a-z0-9-]+)|"([a-z0-9-]+)"))?', re.IGNORECASE)
# Python decodes these names in any case, as the stdlib's content manager asks it to.
CHARSETS = frozenset({"us-ascii", "utf-8", "iso-8859-1", "windows-1252"})
_IDENTITY_ENCODING = re.compile("7bit|8bit|binary", re.IGNORECASE)
_INLINE = re.compile("inline", re.IGNORECASE)

# A mailbox as RFC 5322's dot-atom addr-spec, alone, in angle brackets, or after a display name of
# atoms (single spaces) or a quoted string without escapes; mailboxes separated by a comma.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_ADDR_SPEC = rf"{_ATEXT}+(?:\.{_ATEXT}+)*@{_ATEXT}+(?:\.{_ATEXT}+)*"
_MAILBOX = re.compile(
    rf'(?:({_ADDR_SPEC})|(?:({_ATEXT}+(?: {_ATEXT}+)*)|"([\x20\x21\x23-\x5b\x5d-\x7e]*)") ?<({_ADDR_SPEC})>|<({_ADDR_SPEC})>)'
)
_SEPARATOR = re.compile(", ?")
ADDRESS_FIELDS = ("from", "to", "cc", "bcc", "reply-to")
ADDRESS_MAX = 998  # longer ones (folded lists) take the whole parse
_CONTENT_FIELDS = ("content-type", "content-transfer-encoding", "content-disposition")


@dataclass
class PlainMessage:
    fields: list[tuple[str, str]]  # (name, value), as ``Message.raw_items()`` gives them
    first: dict[str, str]  # each field's first value by lower-case name
    mailboxes: dict[str, list[tuple[str, str]]]  # (display name, addr-spec) by lower-case address field
    charset: str | None  # as ``get_content_charset()`` gives it
    body: bytes


def read(raw: bytes) -> PlainMessage | None:
    """``raw`` read as a plain message, or None when it is not one."""
    end = raw.find(b"\r\n\r\n") + 2
    if end < 2 or b"=?" in raw[:end]:
        return None
    header = _HEADER.match(raw, 0, end)
    if header is None or header.end() != end:
        return None
    fields = _fields(raw[:end].decode("ascii"))
    first: dict[str, str] = {}
    for name, value in fields:
        lower = name.lower()
        if lower in _CONTENT_FIELDS and lower in first:
            return None  # read as the first; simpler to leave to the whole parse
        first.setdefault(lower, value)
    plain, charset = _plain_part(first)
    if not plain:
        return None
    mailboxes: dict[str, list[tuple[str, str]]] = {}
    for name in ADDRESS_FIELDS:
        if name in first:
            found = _mailboxes(first[name])
            if found is None:
                return None
            mailboxes[name] = found
    return PlainMessage(fields, first, mailboxes, charset, raw[end + 2 :])


def _fields(header: str) -> list[tuple[str, str]]:
    """The header's fields as the stdlib's parser sets them (its policy joins a field's lines)."""
    fields: list[tuple[str, str]] = []
    lines: list[str] = []
    for line in header.split("\r\n")[:-1]:
        if line[0] in " \t":
            lines.append(line + "\r\n")
            continue
        if lines:
            fields.append(memo_default.header_source_parse(lines))
        lines = [line + "\r\n"]
    fields.append(memo_default.header_source_parse(lines))
    return fields


def _plain_part(first: dict[str, str]) -> tuple[bool, str | None]:
    """Whether the content fields make the message one inline text/plain part, 7- or 8-bit, in a
    charset of CHARSETS or none; and its declared charset (None if undeclared), as
    ``get_content_charset()`` gives it."""
    disposition = first.get("content-disposition")
    if disposition is not None and not _INLINE.fullmatch(disposition):
        return False, None
    encoding = first.get("content-transfer-encoding")
    if encoding is not None and not _IDENTITY_ENCODING.fullmatch(encoding):
        return False, None
    content_type = first.get("content-type")
    if content_type is None:
        return True, None
    found = _TEXT_PLAIN.fullmatch(content_type)
    if found is None:
        return False, None
    charset = found[1] or found[2]
    if charset is None:
        return True, None
    return charset.lower() in CHARSETS, charset.lower()


def _mailboxes(value: str) -> list[tuple[str, str]] | None:
    if len(value) > ADDRESS_MAX:
        return None
    out: list[tuple[str, str]] = []
    at = 0
    while True:
        found = _MAILBOX.match(value, at)
        if found is None:
            return None
        bare, phrase, quoted, named, bracketed = found.groups()
        out.append((phrase or quoted or "", bare or named or bracketed))
        at = found.end()
        if at == len(value):
            return out
        separator = _SEPARATOR.match(value, at)
        if separator is None:
            return None
        at = separator.end()
