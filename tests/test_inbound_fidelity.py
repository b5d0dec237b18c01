"""Inbound mail as an outside sender writes it, read back as it was meant (SMTP over loopback, SDK)."""

from __future__ import annotations

import secrets

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
