"""``mail.submitted.complete`` read as the stored copy is read: Python's parser, which ends a line at
a bare CR too and the header at its first line that is no field. Whatever the line ends, the parser
finds no Bcc, Return-Path or Authentication-Results in the completed message, the other fields as
the client sent them, in order, and one Message-ID and Date; a reader that ends the header only at
an empty line finds none of the removed fields either."""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime
from email import message_from_bytes, policy

from agentmx.mail.submitted import complete

_LINES = [
    b"Bcc: hidden@example.com",
    b"bcc:hidden@example.com",
    b"Bcc : hidden@example.com",  # obsolete syntax (RFC 5322 4.5): a field to some readers, not the parser
    b"Return-Path: <hidden@example.com>",
    b"Authentication-Results: mx.example; spf=pass",
    b" continued",
    b"\thidden@example.com",
    b"From someone",
    b": no name",
    b"From: agent@example.com",
    b"To: friend@example.com",
    b"Subject: odd line ends",
    b"Message-ID: <client@example.com>",
    b"Date: Tue, 01 Dec 2026 00:00:00 +0000",
    b"X-Other: \xff8-bit",
    b"a line that is no field",
    b"",
]
_ENDS = [b"\r\n", b"\r", b"\n", b"\n\r", b""]
_REMOVED = {"bcc", "return-path", "authentication-results"}
_ANY_END = rb"(?:\r\n|\r|\n)"
_EMPTY_LINE_READER = re.compile(
    rb"(?:^|(?<=\n)|(?<=\r)(?!\n))(?:(?:Bcc|Return-Path|Authentication-Results)[ \t]*:)", re.I
)


def _fields(raw: bytes) -> list[tuple[str, str]]:
    return [(name.lower(), value) for name, value in message_from_bytes(raw, policy=policy.compat32).items()]


def test_the_parser_finds_the_same_fields_less_the_removed_whatever_the_line_ends() -> None:
    rng = random.Random(20261203)
    date = datetime(2026, 12, 3, tzinfo=UTC)
    for _ in range(20000):
        raw = b"".join(rng.choice(_LINES) + rng.choice(_ENDS) for _ in range(rng.randint(0, 12)))
        done = complete(raw, "<added@agentmx.example>", date)
        # Submission puts its Received on top: a leading continuation line must not continue it.
        before, after = _fields(raw), _fields(b"Received: by agentmx.example\r\n" + done)
        kept = [field for field in before if field[0] not in _REMOVED]
        added = [("message-id", "<added@agentmx.example>")] if "message-id" not in dict(before) else []
        added += [("date", "Thu, 03 Dec 2026 00:00:00 +0000")] if "date" not in dict(before) else []
        assert after == [("received", "by agentmx.example"), *added, *kept], raw
        # A reader that ends the header at its first empty line, however lines end.
        header = re.split(_ANY_END + _ANY_END, done, maxsplit=1)[0]
        assert not _EMPTY_LINE_READER.search(header), (raw, done)


def test_an_mbox_from_line_on_top_is_dropped_not_shown_in_the_body() -> None:
    # The parser reads a first line "From " as the mbox envelope's, no field; under the Received it
    # was the header's last line, which the parser makes the body's first: recipients saw it as text.
    date = datetime(2026, 12, 3, tzinfo=UTC)
    for raw in (
        b"From a@x.test Thu Dec  3 00:00:00 2026\r\n\r\nhello\r\n",
        b"From a@x.test Thu\r\nhello\r\n",
    ):
        done = b"Received: by agentmx.example\r\n" + complete(raw, "<added@agentmx.example>", date)
        assert message_from_bytes(done, policy=policy.compat32).get_payload() == "hello\r\n", done
        assert b"From a@x.test" not in done
