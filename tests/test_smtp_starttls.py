"""Inbound STARTTLS (AGENTMX_SMTP_TLS_CERT / _KEY): offered, never required, renewed without a restart."""

from __future__ import annotations

import smtplib
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agentmail import AgentMail
from agentmail.environment import AgentMailEnvironment

from agentmx.testing.certs import key_pem, replace, unverified_client_context, write_self_signed
from agentmx.testing.server import ServerProcess, free_port
from conftest import run_agentmx
from mail_support import download, make_message, smtp_send

SMALL_LIMIT = 1024 * 1024  # a 1 MB message, with its parse, is too big for a front end's link frame


def tls_send(server: ServerProcess, rcpt: str, raw: bytes) -> bytes:
    """Deliver over STARTTLS; returns the server certificate (DER) the session got."""
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as smtp:
        smtp.ehlo("sender.example")
        assert smtp.has_extn("starttls")
        smtp.starttls(context=unverified_client_context())
        assert isinstance(smtp.sock, ssl.SSLSocket)
        peer = smtp.sock.getpeercert(binary_form=True)
        smtp.ehlo("sender.example")
        assert not smtp.has_extn("starttls")  # once only
        smtp.sendmail("sender@example.com", [rcpt], raw)
    assert peer is not None
    return peer


def served_certificate(server: ServerProcess) -> bytes:
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as smtp:
        smtp.starttls(context=unverified_client_context())
        assert isinstance(smtp.sock, ssl.SSLSocket)
        peer = smtp.sock.getpeercert(binary_form=True)
    assert peer is not None
    return peer


class Served:
    def __init__(self, server: ServerProcess, folder: Path, cert: bytes) -> None:
        self.server, self.folder, self.cert = server, folder, cert
        env = AgentMailEnvironment(http=server.base_url, websockets=server.ws_url)
        self.client = AgentMail(api_key=server.create_key(), environment=env)

    def stored_raw(self, inbox: str, message_id: str) -> bytes:
        raw = self.client.inboxes.messages.get_raw(inbox, message_id)
        return download(raw.download_url).content


@pytest.fixture(scope="module", params=["0", "1"], ids=["in-process", "front-end"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp(f"starttls-{request.param}")
    cert = write_self_signed(tmp)
    env = {
        "AGENTMX_SMTP_TLS_CERT": str(tmp / "cert.pem"),
        "AGENTMX_SMTP_TLS_KEY": str(tmp / "key.pem"),
        "AGENTMX_SMTP_WORKERS": request.param,
        "AGENTMX_SMTP_MAX_MESSAGE_SIZE": str(SMALL_LIMIT),
    }
    server = ServerProcess(tmp / "data", env=env).start()
    try:
        yield Served(server, tmp, cert)
    finally:
        server.stop()


def test_mail_sent_over_starttls_is_stored_with_its_tls_in_the_trace(served: Served) -> None:
    inbox = served.client.inboxes.create().inbox_id
    msg = make_message(inbox, subject="Encrypted", attachments=[("a.txt", "text/plain", b"bytes")])
    assert tls_send(served.server, inbox, msg.as_bytes()) == served.cert
    got = served.client.inboxes.messages.get(inbox, msg["Message-ID"])
    assert got.subject == "Encrypted"
    assert got.attachments is not None and [a.filename for a in got.attachments] == ["a.txt"]
    stored = served.stored_raw(inbox, msg["Message-ID"])
    trace = stored[: stored.index(b"\r\nFrom: ")].decode()
    assert trace.startswith(
        "Return-Path: <sender@example.com>\r\nReceived: from sender.example ([127.0.0.1])"
    )
    assert "\r\n\t(using TLSv1.3 with cipher TLS_" in trace
    assert f"with ESMTPS\r\n\tfor <{inbox}>;" in trace
    assert stored.endswith(msg.as_bytes())


def test_plain_text_sessions_are_still_served(served: Served) -> None:
    """RFC 3207: a publicly referenced server must not require STARTTLS."""
    inbox = served.client.inboxes.create().inbox_id
    msg = make_message(inbox, subject="Plain")
    smtp_send(served.server, [inbox], msg.as_bytes())
    stored = served.stored_raw(inbox, msg["Message-ID"])
    assert f"with ESMTP\r\n\tfor <{inbox}>;".encode() in stored
    assert b"(using " not in stored[: stored.index(b"\r\nFrom: ")]


def test_a_message_the_server_traces_itself_names_the_tls_too(served: Served) -> None:
    """Through a front end, a message whose parse does not fit the link is traced by the server."""
    inbox = served.client.inboxes.create().inbox_id
    line = b"\xe9" * 76 + b"\r\n"
    raw = (
        f"From: a@example.com\r\nTo: {inbox}\r\nSubject: big\r\nMessage-ID: <big-tls@example.com>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\n"
    ).encode() + line * ((SMALL_LIMIT - 1024) // len(line))
    tls_send(served.server, inbox, raw)
    assert b"with ESMTPS" in served.stored_raw(inbox, "<big-tls@example.com>")


def _replies(stream: Any, count: int) -> list[str]:
    """The next ``count`` replies, each as its last line's code and text."""
    found = []
    for _ in range(count):
        while (line := stream.readline().decode())[3:4] == "-":
            pass
        found.append(line.strip())
    return found


def test_pipelined_commands_get_their_replies_in_order(served: Served) -> None:
    """RFC 2920 and RFC 2034, offered before and after STARTTLS; AUTH is not offered on the MX port
    (nobody logs in)."""
    with smtplib.SMTP("127.0.0.1", served.server.smtp_port, timeout=30) as smtp:
        smtp.ehlo("sender.example")
        assert (
            smtp.has_extn("pipelining") and smtp.has_extn("enhancedstatuscodes") and not smtp.has_extn("auth")
        )
        assert smtp.starttls(context=unverified_client_context()) == (220, b"2.0.0 Ready to start TLS")
        smtp.ehlo("sender.example")
        assert (
            smtp.has_extn("pipelining") and smtp.has_extn("enhancedstatuscodes") and not smtp.has_extn("auth")
        )
        assert smtp.mail("sender@example.com") == (250, b"2.1.0 OK")
    inbox = served.client.inboxes.create().inbox_id
    first, second = make_message(inbox, subject="Piped one"), make_message(inbox, subject="Piped two")
    with socket.create_connection(("127.0.0.1", served.server.smtp_port), timeout=30) as sock:
        stream = sock.makefile("rb")
        sock.sendall(b"EHLO sender.example\r\n")
        assert _replies(stream, 2)[1].startswith("250 ")
        envelope = f"MAIL FROM:<a@example.com>\r\nRCPT TO:<nobody@agentmx.localhost>\r\nRCPT TO:<{inbox}>\r\nDATA\r\n"
        sock.sendall(envelope.encode())
        assert [r[:3] for r in _replies(stream, 4)] == ["250", "550", "250", "354"]
        # The end of one message, the next envelope and QUIT, in one write each.
        sock.sendall(
            first.as_bytes() + b"\r\n.\r\n" + envelope.encode().replace(b"RCPT TO:<nobody", b"NOOP <x")
        )
        assert [r[:3] for r in _replies(stream, 5)] == ["250", "250", "250", "250", "354"]
        sock.sendall(second.as_bytes() + b"\r\n.\r\nQUIT\r\n")
        assert [r[:3] for r in _replies(stream, 2)] == ["250", "221"]
    for msg in (first, second):
        assert served.client.inboxes.messages.get(inbox, msg["Message-ID"]).subject == msg["Subject"]


def test_a_failed_handshake_ends_only_its_own_session(served: Served) -> None:
    with socket.create_connection(("127.0.0.1", served.server.smtp_port), timeout=30) as sock:
        stream = sock.makefile("rb")
        assert stream.readline().startswith(b"220 ")
        sock.sendall(b"EHLO x\r\nSTARTTLS\r\n")
        while not (line := stream.readline()).startswith(b"250 "):
            assert line.startswith(b"250-")
        assert stream.readline().startswith(b"220 ")
        sock.sendall(b"this is not a TLS client hello\r\n" * 4)
        assert stream.read() == b""  # closed
    # Scanners do this all day: an info line (the harness logs warnings only), not a traceback.
    assert "Traceback" not in served.server.log()
    inbox = served.client.inboxes.create().inbox_id
    msg = make_message(inbox, subject="After a bad handshake")
    tls_send(served.server, inbox, msg.as_bytes())
    assert served.client.inboxes.messages.get(inbox, msg["Message-ID"]).subject == "After a bad handshake"


def test_a_renewed_certificate_is_served_without_a_restart(served: Served) -> None:
    renewed = write_self_signed(served.folder)
    deadline = time.monotonic() + 10
    while (got := served_certificate(served.server)) != renewed and time.monotonic() < deadline:
        time.sleep(0.2)
    assert got == renewed
    # A renewal that does not load (here: a key of another certificate) keeps the last good one.
    good_key = (served.folder / "key.pem").read_bytes()
    replace(served.folder / "key.pem", key_pem())
    time.sleep(1.5)
    inbox = served.client.inboxes.create().inbox_id
    msg = make_message(inbox, subject="After a bad renewal")
    assert tls_send(served.server, inbox, msg.as_bytes()) == renewed
    assert served.client.inboxes.messages.get(inbox, msg["Message-ID"]).subject == "After a bad renewal"
    assert "keeping the loaded one" in served.server.log()
    replace(served.folder / "key.pem", good_key)
    served.cert = renewed  # what the other tests of this server now get


def test_mail_from_another_agentmx_comes_over_tls(served: Served, tmp_path: Path) -> None:
    """agentmx's outbound client (here through a relay with STARTTLS required) meets its inbound TLS."""
    env = {
        "AGENTMX_DOMAIN": "sender.example",
        "AGENTMX_SMTP_RELAY": f"127.0.0.1:{served.server.smtp_port}",
        "AGENTMX_SMTP_RELAY_STARTTLS": "true",
        "AGENTMX_SMTP_RELAY_CA_FILE": str(served.folder / "cert.pem"),  # self-signed: trusted by name
    }
    sender = ServerProcess(tmp_path / "sender", env=env).start()
    try:
        api = AgentMail(
            api_key=sender.create_key(),
            environment=AgentMailEnvironment(http=sender.base_url, websockets=sender.ws_url),
        )
        inbox = served.client.inboxes.create().inbox_id
        sent = api.inboxes.messages.send(
            api.inboxes.create().inbox_id, to=inbox, subject="Hop", text="over TLS"
        )
        deadline = time.monotonic() + 20
        while served.client.inboxes.messages.list(inbox).count == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        got = served.client.inboxes.messages.list(inbox).messages
        assert [m.subject for m in got] == ["Hop"]
        raw = served.stored_raw(inbox, got[0].message_id)
        assert b"\r\n\t(using TLSv1.3 with cipher " in raw and b"with ESMTPS" in raw
        assert sent.message_id == got[0].message_id
    finally:
        sender.stop()


def _serve(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    ports = ["--http-port", str(free_port()), "--smtp-port", str(free_port())]
    return run_agentmx("serve", "--data-dir", str(tmp_path / "d"), *ports, env=env)


def test_a_certificate_that_does_not_load_stops_the_server_with_a_clear_error(tmp_path: Path) -> None:
    write_self_signed(tmp_path)
    out = _serve(
        tmp_path,
        {
            "AGENTMX_SMTP_TLS_CERT": str(tmp_path / "cert.pem"),
            "AGENTMX_SMTP_TLS_KEY": str(tmp_path / "none.pem"),
        },
    )
    assert out.returncode == 2
    assert "agentmx: cannot load the SMTP TLS certificate" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_certificate_without_its_key_is_a_setting_error(tmp_path: Path) -> None:
    out = _serve(tmp_path, {"AGENTMX_SMTP_TLS_CERT": str(tmp_path / "cert.pem")})
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "agentmx: invalid setting AGENTMX_SMTP_TLS_CERT and AGENTMX_SMTP_TLS_KEY must be set together"
    )
