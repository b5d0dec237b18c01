"""Inbound mail as an outside sender writes it, read back as it was meant (SMTP over loopback, SDK)."""

from __future__ import annotations

import secrets
from base64 import b64encode

import pytest

from conftest import Harness
from mail_support import download, smtp_send


def _mid() -> str:
    return f"<{secrets.token_hex(8)}@sender.example>"


def _raw_of(harness: Harness, inbox_id: str, message_id: str) -> bytes:
    client = harness.client()
    return download(client.inboxes.messages.get_raw(inbox_id, message_id).download_url).content


def test_a_bounce_has_the_null_return_path(harness: Harness) -> None:
    inbox_id = harness.client().inboxes.create().inbox_id
    mid = _mid()
    raw = f"From: MAILER-DAEMON@sender.example\r\nTo: {inbox_id}\r\nSubject: Undelivered\r\nMessage-ID: {mid}\r\n\r\nx\r\n"
    assert smtp_send(harness.server, [inbox_id], raw, mail_from="") == {}
    # RFC 5321 4.4: the null reverse-path is "<>" in Return-Path too (it was "<<>>").
    assert _raw_of(harness, inbox_id, mid).startswith(b"Return-Path: <>\r\nReceived: from ")


def test_a_reply_with_more_references_than_postgres_binds_joins_its_thread(harness: Harness) -> None:
    client = harness.client()
    inbox_id = client.inboxes.create().inbox_id
    root = _mid()
    first = (
        f"From: ext@sender.example\r\nTo: {inbox_id}\r\nSubject: Long\r\nMessage-ID: {root}\r\n\r\nroot\r\n"
    )
    smtp_send(harness.server, [inbox_id], first)
    # Each reference looked up was a bound parameter: PostgreSQL (asyncpg) takes 32,767 at most,
    # and the message got a 451 on every try.
    chain = [root, *(f"<r{i}.{secrets.token_hex(2)}@list.example>" for i in range(33_000))]
    mid = _mid()
    reply = (
        f"From: ext@sender.example\r\nTo: {inbox_id}\r\nSubject: Re: Long\r\nMessage-ID: {mid}\r\n"
        f"In-Reply-To: {chain[-1]}\r\nReferences: " + "\r\n ".join(chain) + "\r\n\r\nreply\r\n"
    )
    assert smtp_send(harness.server, [inbox_id], reply) == {}
    thread_id = client.inboxes.messages.get(inbox_id, root).thread_id
    stored = client.inboxes.messages.get(inbox_id, mid)
    assert stored.thread_id == thread_id and stored.references == chain
    assert client.inboxes.threads.get(inbox_id, thread_id).message_count == 2


@pytest.mark.parametrize(
    ("content_type", "body", "text"),
    [
        ("", "Grüße ✓".encode(), "Grüße ✓"),  # UTF-8, no Content-Type at all
        ("text/plain; charset=us-ascii", "naïve".encode(), "naïve"),  # mislabelled UTF-8
        ("text/plain", b"caf\xe9 \x93quoted\x94", "café “quoted”"),  # Windows-1252
    ],
)
def test_eight_bit_text_without_its_charset_is_read_as_sent(
    harness: Harness, content_type: str, body: bytes, text: str
) -> None:
    client = harness.client()
    inbox_id = client.inboxes.create().inbox_id
    mid = _mid()
    header = f"Content-Type: {content_type}\r\nContent-Transfer-Encoding: 8bit\r\n" if content_type else ""
    raw = (
        (
            f"From: ext@sender.example\r\nTo: {inbox_id}\r\nSubject: 8bit\r\nMessage-ID: {mid}\r\n{header}\r\n"
        ).encode()
        + body
        + b"\r\n"
    )
    smtp_send(harness.server, [inbox_id], raw)
    stored = client.inboxes.messages.get(inbox_id, mid)
    # The stdlib decodes such bytes as U+FFFD (a US-ASCII part): the text was lost.
    assert stored.text == text + "\n" and stored.preview == text


def test_encoded_words_in_an_unknown_or_wrong_charset_are_decoded(harness: Harness) -> None:
    client = harness.client()
    inbox_id = client.inboxes.create().inbox_id
    mid = _mid()
    raw = (
        f"From: =?utf-8?q?J=FCrgen?= <j@sender.example>\r\nTo: {inbox_id}\r\n"
        f"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?= =?x-unknown-charset?q?caf=E9?=\r\nMessage-ID: {mid}\r\n\r\nx\r\n"
    )
    smtp_send(harness.server, [inbox_id], raw)
    stored = client.inboxes.messages.get(inbox_id, mid)
    # One word the stdlib cannot decode left the whole field encoded (=?utf-8?q?...?= as the subject).
    assert stored.subject == "Grüßecafé"
    assert stored.from_ == "Jürgen <j@sender.example>"
    assert client.inboxes.threads.get(inbox_id, stored.thread_id).subject == "Grüßecafé"


def test_an_attached_message_downloads_as_it_was_sent(harness: Harness) -> None:
    client = harness.client()
    inbox_id = client.inboxes.create().inbox_id
    inner = (
        b"From: someone@elsewhere.example\r\n"
        b"Subject: a subject line long enough that the default email policy folds it again on output\r\n"
        b"DKIM-Signature: v=1; a=rsa-sha256; d=elsewhere.example;\r\n\ts=s1; b=AbCd\r\n"
        b"\r\n"
        b"caf\xc3\xa9, forwarded as an attachment\r\n"
    )
    mid = _mid()
    raw = (
        (
            f"From: ext@sender.example\r\nTo: {inbox_id}\r\nSubject: Fwd\r\nMessage-ID: {mid}\r\n"
            'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
            "--b1\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
            "--b1\r\nContent-Type: message/rfc822\r\n\r\n"
        ).encode()
        + inner
        + b"\r\n--b1--\r\n"
    )
    smtp_send(harness.server, [inbox_id], raw)
    stored = client.inboxes.messages.get(inbox_id, mid)
    assert stored.attachments is not None
    (attached,) = stored.attachments
    assert (attached.filename, attached.content_type, attached.size) == (
        "message.eml",
        "message/rfc822",
        len(inner),
    )
    url = client.inboxes.messages.get_attachment(inbox_id, mid, attached.attachment_id).download_url
    # It came back with LF line ends and its Subject folded again: not the bytes its signature covers.
    assert download(url).content == inner


def test_message_ids_wider_than_their_column_are_left_out(harness: Harness) -> None:
    client = harness.client()
    inbox_id = client.inboxes.create().inbox_id
    # Encoded words over folded lines decode to an id of any length (RFC 2047 forbids them there); an id
    # without angle brackets got them added. PostgreSQL refused the row: a 451 on every try.
    words = "=?us-ascii?q?<" + "a" * 900 + "?=\r\n =?us-ascii?q?" + "b" * 900 + "@sender.example>?="
    # 700 characters of 4 bytes in UTF-8 fit the column but not PostgreSQL's unique index (2,704 bytes).
    wide = "<" + "".join(chr(0x20000 + i * 7919 % 40000) for i in range(700)) + "@sender.example>"
    wide_words = "\r\n ".join(
        f"=?utf-8?b?{b64encode(wide[i : i + 50].encode()).decode()}?=" for i in range(0, 716, 50)
    )
    mid = _mid()
    for fields in (
        f"Message-ID: {words}",
        f"Message-ID: {mid}\r\nIn-Reply-To: {words}",
        "Message-ID:\r\n " + "c" * 997,
        f"Message-ID: {wide_words}",
    ):
        raw = f"From: ext@sender.example\r\nTo: {inbox_id}\r\nSubject: Wide\r\n{fields}\r\n\r\nx\r\n"
        assert smtp_send(harness.server, [inbox_id], raw) == {}
    stored = client.inboxes.messages.list(inbox_id).messages
    assert len(stored) == 4 and all(len(m.message_id.encode()) <= 998 for m in stored)
    assert client.inboxes.messages.get(inbox_id, mid).in_reply_to is None


def test_text_in_a_charset_that_decodes_to_lone_surrogates_is_stored(harness: Harness) -> None:
    client = harness.client()
    inbox_id = client.inboxes.create().inbox_id
    mid = _mid()
    # The utf-7 and unicode-escape codecs decode these to lone surrogates, which neither database
    # driver can encode: the message got a 451 on every try.
    raw = (
        f"From: =?utf-7?q?+2AA-?= <ext@sender.example>\r\nTo: {inbox_id}\r\nMessage-ID: {mid}\r\n"
        "Subject: =?unicode-escape?q?x\\ud800y?=\r\n"
        'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
        "--b1\r\nContent-Type: text/plain; charset=unicode-escape\r\n\r\nbody \\udc00\r\n"
        '--b1\r\nContent-Type: application/pdf; name="=?utf-7?q?a+2AA-.pdf?="\r\n\r\n%PDF\r\n--b1--\r\n'
    )
    assert smtp_send(harness.server, [inbox_id], raw) == {}
    stored = client.inboxes.messages.get(inbox_id, mid)
    assert (stored.subject, stored.from_, stored.text) == (
        "x\ufffdy",
        "\ufffd <ext@sender.example>",
        "body \ufffd",
    )
    assert stored.attachments is not None and stored.attachments[0].filename == "a\ufffd.pdf"
