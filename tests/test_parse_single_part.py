"""mail/parse.py's load of a single-part message (header parsed alone, the body set whole) against
the stdlib's parse of the whole message, kept here as the oracle.

Random messages, biased to what moves the end of a header: bare CR and LF, empty lines of each
kind, folded and unfolded fields, lines that are no field, a Unix From line, 8-bit bytes, and
the types whose body the parser reads (multipart, message/*). The parsed message and agentmx's
parse of it must be the same.
"""

from __future__ import annotations

from email import message_from_bytes, policy
from email.message import Message

from hypothesis import example, given, settings
from hypothesis import strategies as st

from agentmx.mail.parse import _load, _parse, parse_message
from agentmx.mail.policy import memo_default


def oracle_load(raw: bytes) -> Message:
    """parse._load as it was before the single-part path (agentmx b41fe28)."""
    try:
        return message_from_bytes(raw, policy=memo_default)
    except Exception:  # noqa: BLE001
        return message_from_bytes(raw, policy=policy.compat32)


def _state(msg: Message) -> object:
    """What a parse leaves in a message, its parts' included."""
    payload = msg.get_payload()
    parts = [_state(p) for p in payload] if isinstance(payload, list) else payload
    defects = [type(d).__name__ for d in msg.defects]
    return msg.get_unixfrom(), list(msg.raw_items()), parts, defects, msg.preamble, msg.epilogue


FIELDS = [
    b"Subject: hello",
    b"From: Alice <a@example.com>",
    b"To: b@example.net",
    b"Content-Type: text/plain; charset=utf-8",
    b"Content-Type: text/html",
    b"Content-Type: multipart/mixed; boundary=b",
    b"Content-Type: message/rfc822",
    b"Content-Type: message/delivery-status",
    b'Content-Type: MULTIPART/alternative; boundary="b"',
    b"Content-Type: text/plain; charset=\xe9",
    b"Content-Transfer-Encoding: base64",
    b"MIME-Version: 1.0",
    b"Subject: caf\xc3\xa9 =?utf-8?q?caf=C3=A9?=",
    b"\tfolded on",
    b" folded on",
    b"From someone@example.com Tue Nov 24 18:00:00 2026",
    b"not a field",
    b"X-Empty:",
    b":no name",
    b"",
]
ENDS = [b"\r\n", b"\n", b"\r", b"\r\n\r\n", b"\n\n", b"\r\r\n"]
BODY = [
    b"Hello\r\n",
    b"--b\r\n",
    b"--b--\r\n",
    b"\r\n",
    b"\n",
    b"\r",
    b"Subject: x\r\n",
    b".\r\n",
    b"\xff\xfe",
    b"aGk=\r\n",
]


line = st.tuples(st.sampled_from(FIELDS), st.sampled_from(ENDS)).map(b"".join)


@settings(max_examples=1500, deadline=None)
@given(
    head=st.lists(line, max_size=10).map(b"".join),
    separator=st.sampled_from([b"\r\n", b"", b"\n", b"\r\n\r\n"]),
    body=st.lists(st.one_of(st.sampled_from(BODY), st.binary(max_size=8)), max_size=12).map(b"".join),
)
@example(head=b"Subject: a\r\n", separator=b"\r\n", body=b"Hello\r\n")
@example(head=b"Subject: a\n\nX: b\r\n", separator=b"\r\n", body=b"Hello\r\n")  # a bare LF ends it first
@example(head=b"Subject: a\r\nnot a field\r\n", separator=b"\r\n", body=b"Hello\r\n")
def test_single_part_load_matches_the_whole_parse(head: bytes, separator: bytes, body: bytes) -> None:
    raw = head + separator + body
    assert _state(_load(raw)) == _state(oracle_load(raw))
    assert parse_message(raw) == _parse(oracle_load(raw), raw)
