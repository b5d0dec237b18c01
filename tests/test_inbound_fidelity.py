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
