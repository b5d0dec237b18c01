"""Helpers for mail tests: send over real SMTP into a test server, fetch download URLs."""

from __future__ import annotations

import secrets
import smtplib
import socket
import time
from email import policy
from email.message import EmailMessage
from typing import Any
from urllib.parse import urlsplit

import httpx

from agentmx.testing.server import ServerProcess


def smtp_send(
    server: ServerProcess, rcpts: list[str], raw: bytes | str, mail_from: str = "sender@example.com"
) -> Any:
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as smtp:
        return smtp.sendmail(mail_from, rcpts, raw)


def deliver(server: ServerProcess, inbox: str, message: EmailMessage) -> None:
    """As an MTA does: a 4xx (a shared PostgreSQL out of connections under the suite's load) is tried again."""
    for attempt in range(5):
        try:
            smtp_send(server, [inbox], message.as_bytes())
            return
        except smtplib.SMTPResponseException as exc:
            if exc.smtp_code // 100 != 4 or attempt == 4:
                raise
            time.sleep(0.5)


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


class SlowGet:
    """A GET over a plain socket with a small receive buffer: reads the head, then the body only
    when told (a client that stops reading, or reads slowly)."""

    def __init__(self, url: str, receive_buffer: int = 128 * 1024) -> None:
        parts = urlsplit(url)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(30)
        self.sock.connect((parts.hostname or "127.0.0.1", parts.port or 80))
        request = f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n"
        self.sock.sendall(request.encode())
        got = b""
        while b"\r\n\r\n" not in got:
            chunk = self.sock.recv(4096)
            assert chunk, f"connection closed before the response head: {got!r}"
            got += chunk
        head, _, rest = got.partition(b"\r\n\r\n")
        status_line, *fields = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers = {k.strip().lower(): v.strip() for k, v in (f.split(":", 1) for f in fields)}
        self.body = bytearray(rest)

    def read_rest(self, pause: float = 0.0) -> bytes:
        """The rest of the body, until the server closes (pausing between reads: a slow reader)."""
        while chunk := self.sock.recv(64 * 1024):
            self.body += chunk
            if pause:
                time.sleep(pause)
        self.sock.close()
        return bytes(self.body)

    def close(self) -> None:
        self.sock.close()
