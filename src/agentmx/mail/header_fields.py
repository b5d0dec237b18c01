"""A raw message's header fields read as the stored copy is read: Python's parser, which also ends
a line at a lone CR. The sender checks and SMTP submission both judge the From an agent will see.
"""

from __future__ import annotations

import re
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses

_HEAD_END = re.compile(rb"(\r\n|\n|\r(?!\n))(\r\n|\n|\r(?!\n))")

# The header as the stdlib's parser (email.feedparser, which parses the stored message) reads it:
# the lines from the start that begin a field (a name without spaces, then a colon), continue one
# (white space) or are an mbox "From " line; the first other line, empty or not, ends it. A line
# ends at CRLF, a bare CR or a bare LF: a header with CR-only line ends has as many fields there.
# Possessive (*+): nothing follows a line to backtrack for, and a greedy * kept a record of every line
# (10 MB of short fields took 1 GB and 1 s, on the event loop: the hop limit reads every inbound header).
_PARSED_HEAD = re.compile(rb"(?:(?:From |[\x21-\x39\x3b-\x7e]*+:|[ \t])[^\r\n]*+(?:\r\n|\r|\n|\Z))*+")


def head(raw: bytes) -> bytes:
    """The header, up to and with the end of its last line (an empty line ends it, however lines end)."""
    blank = _HEAD_END.search(raw)
    return raw if blank is None else raw[: blank.start(2)]


def parsed_head_end(raw: bytes) -> int:
    """Where the parser ends the header of ``raw``: after its last field line's end, so at the empty
    line or the first line that is no field (the body's first, to the parser), or at the end."""
    match = _PARSED_HEAD.match(raw)  # always matches, if only the empty string
    return match.end() if match else 0


def parse(raw: bytes) -> Message:
    """The header fields of ``raw`` (its body is not read)."""
    return BytesHeaderParser(policy=compat32).parsebytes(head(raw))


def addresses(fields: Message, *names: str) -> list[str]:
    """Every address in every field of these names, in order ("" where a field names none). Deeply
    nested comments make the address parser recurse: callers reading hostile mail catch RecursionError."""
    return [
        address
        for name in names
        for _, address in getaddresses([str(value) for value in fields.get_all(name) or []])
    ]
