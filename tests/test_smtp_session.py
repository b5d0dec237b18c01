"""The inbound SMTP session against RFC 5321 and its extensions: sizes, dots, special recipients."""

from __future__ import annotations

import secrets
import smtplib
from collections.abc import Callable

import pytest
from agentmail import AgentMail
from agentmail.environment import AgentMailEnvironment

from agentmx.testing.server import ServerProcess

SIZE_LIMIT = 100_000


def _client(server: ServerProcess) -> AgentMail:
    env = AgentMailEnvironment(http=server.base_url, websockets=server.ws_url)
    return AgentMail(api_key=server.create_key(), environment=env)


def _message_of(size: int, line: bytes) -> bytes:
    """A message of exactly ``size`` bytes (RFC 1870's count: CRLFs in, no doubled dots) of ``line``s."""
    head = (
        f"From: a@example.com\r\nSubject: {size}\r\nMessage-ID: <{secrets.token_hex(8)}@example.com>\r\n\r\n"
    )
    raw = head.encode()
    body = line * ((size - len(raw)) // len(line))
    body += b"z" * (size - len(raw) - len(body) - 2) + b"\r\n"
    return raw + body


@pytest.mark.parametrize("workers", ["0", "1"])
def test_a_message_of_exactly_the_size_limit_is_taken_with_dot_lines(
    workers: str, fresh_server: Callable[..., ServerProcess]
) -> None:
    """Lines starting with a dot travel doubled; the size limit counts them once (RFC 1870)."""
    env = {"AGENTMX_SMTP_MAX_MESSAGE_SIZE": str(SIZE_LIMIT), "AGENTMX_SMTP_WORKERS": workers}
    server = fresh_server("sqlite", env=env).start()
    client = _client(server)
    inbox = client.inboxes.create().inbox_id
    dotted = _message_of(SIZE_LIMIT, b"." + b"d" * 76 + b"\r\n")
    assert len(dotted) == SIZE_LIMIT
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as smtp:
        assert smtp.sendmail("a@example.com", [inbox], dotted) == {}  # smtplib declares SIZE=100000
        smtp.mail("a@example.com")  # no SIZE declared: the body itself is measured
        assert smtp.rcpt(inbox)[0] == 250
        code, _ = smtp.data(_message_of(SIZE_LIMIT + 1, b"." + b"d" * 76 + b"\r\n"))
        assert code == 552
    assert client.inboxes.messages.list(inbox).count == 1
