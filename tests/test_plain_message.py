"""mail/plain_message.py: a plain message parsed without the email package gives exactly what the
whole parse (the stdlib's, kept here as the oracle) gives.

Random messages near the edges of what the plain path takes: address fields just inside and just
outside its mailbox grammar, Content-Type, Content-Transfer-Encoding and Content-Disposition values
it takes or refuses, repeated and folded fields, encoded words, 8-bit bytes, bare CR and LF, and
bodies in and out of their declared charset.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import example, given, settings
from hypothesis import strategies as st

from agentmx.mail import plain_message
from agentmx.mail.parse import ParsedMessage, _load, _parse, parse_message
from agentmx.smtp.trace import trace_headers

DATA = Path(__file__).parent / "data"


def whole_parse(raw: bytes) -> ParsedMessage:
    return _parse(_load(raw), raw)


def bench_message(n: int) -> bytes:
    """What bench/smtp_ingest.py sends, with the trace a front end adds."""
    head = (
        "From: Load Generator <load@bench.example>\r\n"
        "To: <ingest@agentmx.localhost>\r\n"
        f"Subject: bench message {n}\r\n"
        f"Message-ID: <bench-{n}@bench.example>\r\n"
        "Date: Tue, 24 Nov 2026 18:00:00 +0000\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
    )
    body = "The quick brown fox jumps over the lazy dog, again and again and again.\r\n" * 50
    trace = trace_headers("load@bench.example", "client", ("127.0.0.1", 1), "mx.example", ["a@mx.example"])
    return trace + (head + body).encode()


def test_the_bench_message_takes_the_plain_path() -> None:
    raw = bench_message(1)
    assert plain_message.read(raw) is not None
    assert parse_message(raw) == whole_parse(raw)


def test_fixtures_parse_as_the_whole_parse() -> None:
    taken = 0
    for path in sorted(DATA.glob("*.eml")):
        raw = path.read_bytes()
        for variant in (raw, raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")):
            taken += plain_message.read(variant) is not None
            assert parse_message(variant) == whole_parse(variant), path.name
    assert taken >= 2  # plain.eml and reply_quoted.eml


ATOM = st.sampled_from(["Alice", "bob", "O'Neil", "a.b", "x+y", "=?", "Jo", "é", "", "a b", "a  b", "@", "."])
ADDR = st.sampled_from(
    [
        "a@example.com",
        "first.last@sub.example.org",
        "x+tag@example.com",
        "a..b@example.com",
        ".a@example.com",
        "a@example",
        "a@[127.0.0.1]",
        '"q"@example.com',
        "no-at-sign",
        "a@b@c",
        "A@Example.COM",
        "",
    ]
)
QUOTED = st.sampled_from(
    ['"Doe, John"', '"a@b.c"', '""', '"  "', '"x\\"y"', '"a;b<c>"', '"tab\there"', '"ok"']
)


@st.composite
def mailbox(draw: st.DrawFn) -> str:
    addr = draw(ADDR)
    form = draw(st.integers(0, 4))
    if form == 0:
        return addr
    if form == 1:
        return f"<{addr}>"
    name = draw(QUOTED) if form == 2 else " ".join(draw(st.lists(ATOM, min_size=1, max_size=3)))
    space = draw(st.sampled_from([" ", "", "  ", "\t"]))
    return f"{name}{space}<{addr}>"


address_list = st.lists(mailbox(), min_size=1, max_size=3).flatmap(
    lambda boxes: st.sampled_from([", ", ",", " , ", ",  "]).map(lambda sep: sep.join(boxes))
)
CONTENT_TYPES = st.sampled_from(
    [
        "text/plain",
        "TEXT/Plain",
        "text/plain; charset=utf-8",
        "text/plain;charset=UTF-8",
        'text/plain; charset="us-ascii"',
        "text/plain; charset=iso-8859-1",
        "text/plain; charset=windows-1252",
        "text/plain; charset=koi8-r",
        "text/plain; charset=nonesuch",
        'text/plain; charset="utf-8',
        "text/plain; charset=utf-8; format=flowed",
        "text/plain; name=a.txt",
        "text/plain;  charset=utf-8",
        "text/plain ; charset=utf-8",
        "text/html; charset=utf-8",
        "text/plain\r\n\tcharset=utf-8",
        "multipart/mixed; boundary=b",
        "message/rfc822",
        "application/octet-stream",
        "text",
        "",
    ]
)
ENCODINGS = st.sampled_from(
    ["7bit", "8BIT", "binary", "quoted-printable", "base64", " 7bit", "7bit ", "x-uue", ""]
)
DISPOSITIONS = st.sampled_from(["inline", "INLINE", "attachment", "inline; filename=a.txt", ""])
TEXT = st.sampled_from(
    [
        "hello",
        "=?utf-8?q?caf=C3=A9?=",
        "Tue, 24 Nov 2026 18:00:00 +0000",
        "not a date",
        "<id@example.com>",
        "<a@x> <b@y>",
        "  padded  ",
        "a\r\n\tfolded",
        "a\r\n folded",
        "",
        "caf\xe9",
        "tab\there",
    ]
)
NAMES_OF_TEXT = [
    "Subject",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "X-Other",
    "subject",
]
NAMES_OF_ADDRESSES = ["From", "To", "Cc", "Bcc", "Reply-To", "from", "TO"]


@st.composite
def field(draw: st.DrawFn) -> str:
    kind = draw(st.integers(0, 5))
    if kind <= 1:
        name = draw(st.sampled_from(NAMES_OF_ADDRESSES))
        value = draw(st.one_of(address_list, TEXT))
    elif kind == 2:
        name, value = draw(st.sampled_from(["Content-Type", "content-type"])), draw(CONTENT_TYPES)
    elif kind == 3:
        name = draw(st.sampled_from(["Content-Transfer-Encoding", "Content-Disposition"]))
        value = draw(ENCODINGS if name == "Content-Transfer-Encoding" else DISPOSITIONS)
    else:
        name, value = draw(st.sampled_from(NAMES_OF_TEXT)), draw(TEXT)
    colon = draw(st.sampled_from([": ", ":", ":  ", ":\t", " : "]))
    return f"{name}{colon}{value}"


VALID_MAILBOX = st.sampled_from(
    [
        "a@example.com",
        "<b@example.com>",
        "Alice <a@example.com>",
        '"Doe, John" <j@example.com>',
        "Jo O'Neil<x@y.z>",
    ]
)


@st.composite
def plain_field(draw: st.DrawFn) -> str:
    """A field the plain path takes (most of them), to keep the other fields it is drawn with in play."""
    kind = draw(st.integers(0, 4))
    if kind == 0:
        boxes = draw(st.lists(VALID_MAILBOX, min_size=1, max_size=2))
        return f"{draw(st.sampled_from(NAMES_OF_ADDRESSES))}: {', '.join(boxes)}"
    if kind == 1:
        return (
            f"Content-Type: text/plain{draw(st.sampled_from(['', '; charset=utf-8', '; charset=us-ascii']))}"
        )
    if kind == 2:
        return f"Content-Transfer-Encoding: {draw(st.sampled_from(['7bit', '8bit']))}"
    value = draw(
        st.sampled_from(["hello", "Tue, 24 Nov 2026 18:00:00 +0000", "<id@example.com>", "a\r\n\tfolded"])
    )
    return f"{draw(st.sampled_from(NAMES_OF_TEXT))}: {value}"


# Mostly fields the plain path takes, with now and then one that it may not.
mixed_field = st.integers(0, 5).flatmap(lambda k: field() if k == 0 else plain_field())
content_field = st.one_of(
    CONTENT_TYPES.map("Content-Type: {}".format),
    ENCODINGS.map("Content-Transfer-Encoding: {}".format),
    DISPOSITIONS.map("Content-Disposition: {}".format),
)

BODY = st.lists(
    st.one_of(
        st.sampled_from(
            [
                "Hello\r\n",
                "caf\xe9\r\n",
                "\r\n",
                "\n",
                "\r",
                "> quoted\r\n",
                "On Mon, x wrote:\r\n",
                "aGk=\r\n",
                "=41=\r\n",
            ]
        ),
        st.text(max_size=8),
    ),
    max_size=10,
).map("".join)


@settings(max_examples=1000, deadline=None)  # 40,000 passed once; 1,000 keep the suite fast
@given(
    fields=st.one_of(
        st.lists(field(), min_size=1, max_size=9),
        st.lists(mixed_field, min_size=1, max_size=9),
        st.tuples(st.lists(plain_field(), max_size=6), st.lists(content_field, min_size=1, max_size=2)).map(
            lambda drawn: drawn[0] + drawn[1]
        ),
    ),
    line_end=st.sampled_from(["\r\n"] * 6 + ["\n", "\r"]),
    body=BODY,
    body_encoding=st.sampled_from(["utf-8", "latin-1", "cp1252"]),
    raw_bytes=st.binary(max_size=3),
)
@example(
    fields=["From: Alice <a@example.com>", "Content-Type: text/plain; charset=utf-8"],
    line_end="\r\n",
    body="caf\xe9\r\n",
    body_encoding="latin-1",
    raw_bytes=b"",
)
@example(
    fields=["Content-Type: text/plain", "Content-Transfer-Encoding: quoted-printable"],
    line_end="\r\n",
    body="=41=\r\n",
    body_encoding="utf-8",
    raw_bytes=b"",
)
@example(
    fields=["To: a@example.com, b@example.com"],
    line_end="\r\n",
    body="x",
    body_encoding="utf-8",
    raw_bytes=b"",
)
@example(
    fields=["Subject: a", "Subject: b"], line_end="\r\n", body="", body_encoding="utf-8", raw_bytes=b"\xff"
)
def test_parse_matches_the_whole_parse(
    fields: list[str], line_end: str, body: str, body_encoding: str, raw_bytes: bytes
) -> None:
    head = line_end.join(fields) + line_end + line_end
    raw = head.encode("utf-8") + body.encode(body_encoding, "replace") + raw_bytes
    assert parse_message(raw) == whole_parse(raw)
