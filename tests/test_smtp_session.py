"""The inbound SMTP session against RFC 5321 and its extensions: sizes, dots, special recipients."""

from __future__ import annotations

import secrets
import smtplib
import socket
from collections.abc import Callable

import pytest
from agentmail import AgentMail
from agentmail.core.api_error import ApiError
from agentmail.environment import AgentMailEnvironment
from agentmail.inboxes.types import CreateInboxRequest

from agentmx.testing.server import ServerProcess
from conftest import Harness
from mail_support import download, make_message, smtp_send

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


@pytest.mark.parametrize("workers", ["0", "1"])
def test_a_body_of_empty_lines_is_stored_whole_and_a_pipelined_command_follows(
    workers: str, fresh_server: Callable[..., ServerProcess]
) -> None:
    """A body that begins with 200,000 empty lines keeps the end of what was read a partial
    <CRLF>.<CRLF>: read in bulk all the same (smtp/data.py, it went 3 or 4 bytes a read), stored
    whole, and the command sent in the same packet as the terminator is still answered."""
    server = fresh_server("sqlite", env={"AGENTMX_SMTP_WORKERS": workers}).start()
    client = _client(server)
    inbox = client.inboxes.create().inbox_id
    raw = b"\r\n" * 200_000 + b"text after the empty lines\r\n"  # no header: all of it is the body
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=60) as smtp:
        smtp.ehlo()
        smtp.mail("a@example.com")
        assert smtp.rcpt(inbox)[0] == 250
        assert smtp.docmd("DATA")[0] == 354
        smtp.send(raw + b".\r\nNOOP\r\n")  # no line begins with a dot: nothing to stuff
        assert smtp.getreply()[0] == 250
        assert smtp.getreply()[0] == 250  # the NOOP, left in the reader for the session
        assert smtp.sendmail("a@example.com", [inbox], make_message(inbox).as_bytes()) == {}
    listed = client.inboxes.messages.list(inbox).messages
    assert len(listed) == 2
    stored = [
        download(client.inboxes.messages.get_raw(inbox, m.message_id).download_url).content for m in listed
    ]
    assert sum(s.endswith(raw) for s in stored) == 1


@pytest.mark.parametrize("workers", ["0", "1"])
def test_pipelined_commands_are_answered_in_order_without_waiting_for_more(
    workers: str, fresh_server: Callable[..., ServerProcess]
) -> None:
    """RFC 2920: commands sent at once get their replies in order (those that wait for the next
    ones to go out together never wait for input), the 250 after DATA once the message is stored."""
    server = fresh_server("sqlite", env={"AGENTMX_SMTP_WORKERS": workers}).start()
    client = _client(server)
    inbox = client.inboxes.create().inbox_id
    msg = make_message(inbox)
    with socket.create_connection(("127.0.0.1", server.smtp_port), timeout=30) as sock:
        f = sock.makefile("rb")

        def codes(count: int) -> list[bytes]:
            lines = [f.readline() for _ in range(count)]
            return [line[:4] for line in lines]

        assert codes(1) == [b"220 "]
        sock.sendall(
            b"EHLO client.example\r\nMAIL FROM:<a@example.com>\r\n"
            + f"RCPT TO:<{inbox}>\r\nRCPT TO:<nobody@agentmx.localhost>\r\nRCPT TO:<{inbox}>\r\n".encode()
            + b"DATA\r\n"
        )
        while f.readline().startswith(b"250-"):  # EHLO's lines, then its last one
            pass
        assert codes(5) == [b"250 ", b"250 ", b"550 ", b"250 ", b"354 "]
        sock.sendall(msg.as_bytes() + b".\r\nRSET\r\nNOOP\r\nNO")
        assert codes(3) == [b"250 ", b"250 ", b"250 "]  # stored, RSET, NOOP: "NO" is not a command yet
        assert client.inboxes.messages.get(inbox, msg["Message-ID"]).message_id == msg["Message-ID"]
        sock.sendall(b"OP\r\nQUIT\r\n")
        assert codes(2) == [b"250 ", b"221 "]
        assert f.readline() == b""


def test_postmaster_without_a_domain_reaches_the_default_domains_postmaster(harness: Harness) -> None:
    """RFC 5321 4.5.1: RCPT TO:<Postmaster> (no domain) must be taken: it is postmaster@ the default domain,
    delivered to that inbox once however many ways it is named."""
    client = harness.client()
    try:
        client.inboxes.create(request=CreateInboxRequest(username="postmaster"))
    except ApiError as exc:  # made by an earlier test on this shared server
        assert exc.status_code == 409
    postmaster = "postmaster@agentmx.localhost"
    msg = make_message(postmaster)
    rcpts = ["Postmaster", "postmaster", "POSTMASTER@agentmx.localhost"]
    assert smtp_send(harness.server, rcpts, msg.as_bytes()) == {}
    stored = client.inboxes.messages.get(postmaster, msg["Message-ID"])
    assert stored.message_id == msg["Message-ID"]
    listed = client.inboxes.messages.list(postmaster, limit=100)
    assert sum(m.message_id == msg["Message-ID"] for m in listed.messages) == 1


def test_help_lists_every_command(harness: Harness) -> None:
    with socket.create_connection(("127.0.0.1", harness.server.smtp_port), timeout=30) as sock:
        f = sock.makefile("rb")
        assert f.readline().startswith(b"220")
        sock.sendall(b"HELO client.example\r\nHELP\r\nHELP data\r\nHELP rset\r\n")
        replies = [f.readline() for _ in range(4)][1:]
    listed = replies[0].split(b":", 1)[1].split()
    assert {b"DATA", b"HELO", b"HELP", b"MAIL", b"NOOP", b"QUIT", b"RCPT", b"RSET", b"VRFY"} <= set(listed)
    assert replies[1:] == [b"250 2.0.0 Syntax: DATA\r\n", b"250 2.0.0 Syntax: RSET\r\n"]


def test_lines_over_1000_octets_are_taken_whole(harness: Harness) -> None:
    """As Postfix: a 500 after DATA would bounce mail from senders that never wrap their lines."""
    client = harness.client()
    inbox = client.inboxes.create().inbox_id
    long_line = "x" * 5000 + ". and " + "y" * 200_000
    dotted = "." + "z" * 3000  # doubled on the wire, stored once
    head = f"From: a@example.com\r\nTo: {inbox}\r\nSubject: long\r\nMessage-ID: <{secrets.token_hex(8)}@example.com>\r\n"
    raw = f"{head}\r\n{long_line}\r\n{dotted}\r\nend\r\n".encode()
    assert smtp_send(harness.server, [inbox], raw) == {}
    listed = client.inboxes.messages.list(inbox)
    assert listed.count == 1
    stored = client.inboxes.messages.get(inbox, listed.messages[0].message_id)
    assert stored.text is not None
    assert stored.text.split("\n")[:3] == [long_line, dotted, "end"]


def test_command_lines_over_their_limit_get_500_and_the_session_goes_on(harness: Harness) -> None:
    """Past RFC 5321's 1000 octets and past the session reader's limit, a command line is read to its
    end and refused; the next commands are answered as usual."""
    inbox = harness.client().inboxes.create().inbox_id
    with socket.create_connection(("127.0.0.1", harness.server.smtp_port), timeout=30) as sock:
        f = sock.makefile("rb")
        assert f.readline().startswith(b"220")
        sock.sendall(b"HELO client.example\r\n")
        assert f.readline().startswith(b"250")
        for size in (2_000, 70_000, 300_000):
            sock.sendall(b"NOOP " + b"x" * size + b"\r\n")
            assert f.readline() == b"500 5.5.2 Command line too long\r\n"
        sock.sendall(f"MAIL FROM:<a@example.com>\r\nRCPT TO:<{inbox}>\r\nDATA\r\n".encode())
        assert [f.readline()[:3] for _ in range(3)] == [b"250", b"250", b"354"]
        sock.sendall(make_message(inbox, "after long commands").as_bytes() + b".\r\n")
        assert f.readline().startswith(b"250 2.0.0")
    assert harness.client().inboxes.messages.list(inbox).count == 1


@pytest.mark.parametrize(
    ("a_label", "written"),
    # IDNA 2008 (as DNS and agentmx's domains have it): "straße" is not IDNA 2003's "strasse".
    [("xn--bcher-kva.example", "Bücher.example"), ("xn--strae-oqa.example", "Straße.example")],
)
def test_a_domain_written_in_unicode_names_its_a_label_inbox(
    fresh_server: Callable[..., ServerProcess], a_label: str, written: str
) -> None:
    """RFC 6531 3.2: an SMTPUTF8 client may write the recipient's domain in U-labels."""
    server = fresh_server("sqlite", env={"AGENTMX_DOMAIN": a_label}).start()
    client = _client(server)
    inbox = client.inboxes.create(request=CreateInboxRequest(username="agent")).inbox_id
    assert inbox == f"agent@{a_label}"
    msg = make_message(f"agent@{written.lower()}")
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as smtp:
        refused = smtp.sendmail("jörg@example.com", [f"Agent@{written}"], msg.as_bytes(), ["SMTPUTF8"])
    assert refused == {}
    assert client.inboxes.messages.get(inbox, msg["Message-ID"]).message_id == msg["Message-ID"]


@pytest.mark.parametrize("path", ["<", "<a@", '<"', "a@"])
def test_a_truncated_address_is_refused_as_malformed(harness: Harness, path: str) -> None:
    """Python's address parser raised IndexError on these: aiosmtpd answered 500 with the exception's
    name and logged a traceback for each."""
    with smtplib.SMTP("127.0.0.1", harness.server.smtp_port, timeout=30) as smtp:
        smtp.ehlo("client.example")
        assert smtp.docmd("MAIL", f"FROM:{path}") == (553, b"5.1.3 Error: malformed address")
        assert smtp.mail("sender@example.com")[0] == 250
        assert smtp.docmd("RCPT", f"TO:{path}") == (553, b"5.1.3 Error: malformed address")
