"""Helpers shared by the draft tests: inboxes, inbound mail over real SMTP, waiting."""

from __future__ import annotations

import secrets
import smtplib
import time
from collections.abc import Callable
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any, TypeVar

from agentmail import AgentMail
from agentmail.inboxes.types import CreateInboxRequest

from agentmx.testing.server import ServerProcess

T = TypeVar("T")


def new_inbox(client: AgentMail) -> str:
    return client.inboxes.create(request=CreateInboxRequest(username="d" + secrets.token_hex(5))).inbox_id


def inject(
    server: ServerProcess,
    to: str,
    *,
    subject: str = "Hello there",
    text: str = "Original body line.",
    sender: str = "Alice <alice@example.com>",
    cc: str | None = None,
    reply_to: str | None = None,
    attachment: bytes | None = None,
) -> str:
    """Deliver one inbound message over SMTP; returns its Message-ID."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    if cc:
        msg["Cc"] = cc
    if reply_to:
        msg["Reply-To"] = reply_to
    msg["Subject"] = subject
    msg["Message-ID"] = make_msgid(domain="example.com")
    msg.set_content(text)
    if attachment is not None:
        msg.add_attachment(attachment, maintype="application", subtype="octet-stream", filename="orig.bin")
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as smtp:
        smtp.send_message(msg, from_addr="alice@example.com", to_addrs=[to])
    return str(msg["Message-ID"])


def wait_for(fn: Callable[[], T | None], timeout: float = 15.0, interval: float = 0.1) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(interval)


def messages(client: AgentMail, inbox_id: str, label: str) -> list[Any]:
    page = client.inboxes.messages.list(
        inbox_id, labels=[label], limit=100, include_unauthenticated=True, include_spam=True
    )
    return list(page.messages)
