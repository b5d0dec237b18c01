"""Helpers for mail tests: send over real SMTP into a test server, fetch download URLs."""

from __future__ import annotations

import secrets
import smtplib
from email import policy
from email.message import EmailMessage
from typing import Any

import httpx

from agentmx.testing.server import ServerProcess


def smtp_send(
    server: ServerProcess, rcpts: list[str], raw: bytes | str, mail_from: str = "sender@example.com"
) -> Any:
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as smtp:
        return smtp.sendmail(mail_from, rcpts, raw)


def make_message(
    to: str,
    subject: str = "Hello",
    text: str = "Hello there",
    *,
    sender: str = "Sender Person <sender@example.com>",
    message_id: str | None = None,
    in_reply_to: str | None = None,
    html: str | None = None,
    attachments: list[tuple[str, str, bytes]] | None = None,
    inline_image: bytes | None = None,
    cc: str | None = None,
) -> EmailMessage:
    msg = EmailMessage(policy=policy.SMTP)  # CRLF, as it travels
    msg["From"] = sender
    msg["To"] = to
    if cc:
        msg["Cc"] = cc
    msg["Subject"] = subject
    msg["Message-ID"] = message_id or f"<{secrets.token_hex(8)}@example.com>"
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
        msg["References"] = in_reply_to
    msg.set_content(text)
    if html is not None:
        msg.add_alternative(html, subtype="html")
        if inline_image is not None:
            parts = msg.get_payload()
            assert isinstance(parts, list)
            html_part = parts[1]
            assert isinstance(html_part, EmailMessage)
            html_part.add_related(
                inline_image, "image", "png", cid="<logo@example.com>", disposition="inline"
            )
    for filename, ctype, data in attachments or []:
        maintype, subtype = ctype.split("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return msg


def download(url: str) -> httpx.Response:
    return httpx.get(url, timeout=30)
