"""The message parser and quote stripper on real .eml fixtures (pure functions, no server)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from agentmx.mail import stored_extracts
from agentmx.mail.parse import PARSE_IN_THREAD_BYTES, PARSE_ONE_AT_A_TIME_BYTES, parse_message, parse_off_loop
from agentmx.mail.quotes import extract_html, extract_text

DATA = Path(__file__).parent / "data"


def load(name: str) -> bytes:
    return (DATA / name).read_bytes()


def test_plain() -> None:
    p = parse_message(load("plain.eml"))
    assert p.from_ == "Alice Example <alice@example.com>"
    assert p.to == ["Bob <bob@example.net>"]
    assert p.cc == ["carol@example.org"]
    assert p.reply_to == ["replies@example.com"]
    assert p.subject == "Plain hello"
    assert p.message_id == "<plain-1@example.com>"
    assert p.date is not None and p.date.year == 2026
    assert p.text is not None and p.text.startswith("Hello Bob,\n")
    assert p.html is None
    assert p.preview == "Hello Bob, this is a plain message."
    assert p.headers["Subject"] == "Plain hello"
    assert p.attachments == []


def test_alternative_decodes_qp_and_html() -> None:
    p = parse_message(load("alternative.eml"))
    assert p.text is not None and p.text.strip() == "Café time"
    assert p.html is not None and "<b>time</b>" in p.html


def test_attachments_and_inline_cid_image() -> None:
    p = parse_message(load("attachments.eml"))
    assert p.html is not None and "cid:logo@x" in p.html
    assert p.text is None and p.preview == "See"  # no text part: the preview is the HTML's words
    inline, pdf = p.attachments
    assert (inline.content_type, inline.disposition, inline.content_id) == ("image/png", "inline", "logo@x")
    assert inline.data.startswith(b"\x89PNG")
    assert (pdf.filename, pdf.content_type, pdf.disposition) == (
        "report.pdf",
        "application/pdf",
        "attachment",
    )
    assert pdf.data.startswith(b"%PDF-1.4")


def test_bad_charset_is_decoded_best_effort() -> None:
    p = parse_message(load("bad_charset.eml"))
    assert p.text is not None and "Café body" in p.text
    assert p.subject is not None and "Bad" in p.subject


def test_eight_bit_headers() -> None:
    p = parse_message(load("eight_bit_headers.eml"))
    assert p.subject == "Grüße aus Köln"
    assert p.from_ == "Jörg Müller <jorg@example.com>"


def test_broken_mime_never_raises() -> None:
    p = parse_message(load("broken_mime.eml"))
    assert p.subject == "Broken"
    assert p.size == len(load("broken_mime.eml"))


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00\xff\xfe",
        b"no headers at all",
        b"Subject: =?utf-8?b?!!!?=\r\n\r\nx",
        b"From: <<<>>>\r\n\r\n",
    ],
)
def test_garbage_never_raises(raw: bytes) -> None:
    p = parse_message(raw)
    assert p.size == len(raw)
    assert "\x00" not in (p.text or "")


@pytest.mark.parametrize(
    "date",
    [
        "Tue, 24 Nov 2026 18:00:00 +99999999999999999999",  # an offset past a C int
        "Tue, 24 Nov 99999999999 18:00:00 +0000",  # a year past a C int
        "Tue, 24 Nov 2026 99999999999999999999:00:00 +0000",
    ],
)
def test_a_date_out_of_every_range_is_no_date_and_the_rest_is_read(date: str) -> None:
    p = parse_message(f"From: a@example.com\r\nSubject: hi\r\nDate: {date}\r\n\r\nbody".encode())
    assert (p.from_, p.subject, p.date, p.text) == ("a@example.com", "hi", None, "body")


def test_reply_with_quoted_history() -> None:
    p = parse_message(load("reply_quoted.eml"))
    assert p.in_reply_to == "<plain-1@example.com>"
    assert p.references == ["<plain-1@example.com>"]
    assert p.extracted_text == "Sounds good, see you then."
    assert p.extracted_html == "<div>Sounds good, see you then.</div>"
    assert p.text is not None and "> Hello Bob," in p.text


def test_outlook_original_message_block() -> None:
    p = parse_message(load("reply_outlook.eml"))
    assert p.extracted_text == "Agreed."


def test_quote_helpers() -> None:
    assert extract_text("new\n\nOn Mon, Jan 1, 2024, Bob <b@x> wrote:\n> old") == "new"
    assert extract_text("new\nFrom: Bob\nSent: Monday\nTo: A\n\nold") == "new"
    assert extract_text("> quoted only at top\nanswer") == "> quoted only at top\nanswer"
    assert extract_html('<p>hi</p><blockquote type="cite"><p>old</p></blockquote>') == "<p>hi</p>"
    assert extract_html('<div>hi</div><div id="divRplyFwdMsg">From: x</div><div>old</div>') == "<div>hi</div>"


def test_stored_extracts_round_trip() -> None:
    body = "Hello\nthere\n"
    for extract in ("Hello\nthere", "Hello", ""):
        assert stored_extracts.from_storage(stored_extracts.for_storage(extract, body), body) == extract
    assert stored_extracts.for_storage("Hello\nthere", body) is None  # the copy is not stored
    assert stored_extracts.from_storage("Hello\nthere", body) == "Hello\nthere"  # rows stored with it
    assert stored_extracts.for_storage(None, None) is None
    assert stored_extracts.from_storage(None, None) is None


def test_event_bodies_store_an_extract_equal_to_its_body_once() -> None:
    whole = {
        "event_type": "message.received",
        "message": {
            "text": "Hi\n",
            "extracted_text": "Hi",
            "html": "<p>Hi</p><blockquote>q</blockquote>",
            "extracted_html": "<p>Hi</p>",
        },
    }
    stored = stored_extracts.compact_event(whole)
    assert "extracted_text" not in stored["message"] and stored["message"]["extracted_html"] == "<p>Hi</p>"
    assert stored_extracts.full_event(stored) == whole
    assert stored_extracts.full_event(whole) is whole  # events stored whole are sent as they are
    over_budget = {"message": {"extracted_text": "Hi"}}  # text and html dropped (EVENT_BODY_BUDGET)
    assert stored_extracts.full_event(stored_extracts.compact_event(over_budget)) == over_budget
    assert stored_extracts.compact_event({"domain": {}}) == {"domain": {}}


def _attached(content_type: str, disposition: str, body: bytes = b"hello") -> bytes:
    return (
        b'From: a@example.com\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain; charset=iso-8859-1\r\n\r\ncaf\xe9\r\n"
        b"--b\r\nContent-Type: " + content_type.encode() + b"\r\n"
        b"Content-Disposition: " + disposition.encode() + b"\r\n\r\n" + body + b"\r\n--b--\r\n"
    )


def test_header_parameters_are_each_fields_own_when_read_again() -> None:
    """The parameters of a header text are split once and kept (mail/policy.MemoMessage): each
    message, part and field still reads its own, in the order they come."""
    messages = [
        _attached('application/pdf; name="a.pdf"', "attachment"),
        _attached('application/pdf; name="b.pdf"', "attachment"),
        _attached("application/pdf", "attachment; filename*=utf-8''%E2%82%AC.pdf"),
        _attached('application/pdf; name="a.pdf"', 'attachment; filename="c.pdf"'),
        # The same text as a Content-Disposition and as a Content-Type: filename and name differ.
        _attached('application/octet-stream; filename="d.bin"', 'attachment; filename="d.bin"'),
        _attached('application/pdf; name="a.pdf"', "attachment"),
    ]
    for _ in range(2):
        parsed = [parse_message(raw) for raw in messages]
        assert [p.attachments[0].filename for p in parsed] == [
            "a.pdf",
            "b.pdf",
            "€.pdf",
            "c.pdf",
            "d.bin",
            "a.pdf",
        ]
        assert {p.text for p in parsed} == {"café"}  # charset=iso-8859-1, read each time


def test_a_megabyte_message_is_not_parsed_behind_a_slow_large_one() -> None:
    """Was: every message over 256 KB waited its turn on one thread, so a 1 MB message sat behind a
    hostile one that takes seconds to parse (two 10 MB ones: 25 s)."""
    megabyte = 1024 * 1024
    slow = b"From: a@example.com\r\nContent-Type: text/html\r\n\r\n" + b"<div>" * (2 * megabyte // 5 + 1)
    legit = b"From: a@example.com\r\nSubject: legit\r\n\r\n" + (b"x" * 76 + b"\r\n") * (megabyte // 78)
    assert len(slow) > PARSE_ONE_AT_A_TIME_BYTES > len(legit) > PARSE_IN_THREAD_BYTES

    async def race() -> list[str]:
        finished: list[str] = []

        async def parse(name: str, raw: bytes) -> None:
            await parse_off_loop(raw)
            finished.append(name)

        slow_parse = asyncio.create_task(parse("slow", slow))
        await asyncio.sleep(0.05)  # the slow one is on its thread
        await parse("legit", legit)
        await slow_parse
        return finished

    assert asyncio.run(race()) == ["legit", "slow"]


def test_parses_leave_the_default_executor_to_short_work() -> None:
    """Was: messages of 256 KB-2 MB were parsed in the default executor (6 threads on 2 cores), which
    blob reads and writes, DKIM signing and verification and getaddrinfo share: 6 hostile ones of
    2 MB (about 2 s of CPU each) held it for 10 s, and a no-op sent there waited all that time."""
    hostile = (
        b"From: a@example.com\r\n" + b"a:b\r\n" * ((PARSE_ONE_AT_A_TIME_BYTES - 100) // 5) + b"\r\nhi\r\n"
    )
    assert PARSE_IN_THREAD_BYTES < len(hostile) <= PARSE_ONE_AT_A_TIME_BYTES

    async def wait_for_a_thread() -> float:
        parses = [asyncio.create_task(parse_off_loop(hostile)) for _ in range(6)]
        await asyncio.sleep(0.05)  # the parses have their threads
        began = time.monotonic()
        await asyncio.to_thread(lambda: None)
        waited = time.monotonic() - began
        await asyncio.gather(*parses)
        return waited

    assert asyncio.run(wait_for_a_thread()) < 1.0
