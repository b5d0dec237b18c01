"""Outbound sessions whose peer goes silent at the end: the caller (a job's slot) and the socket are let go soon.

The peer is a blocking TLS server on loopback that never sends close_notify nor closes: a host that
vanished. It records when the client's TCP connection ends (FIN or reset on the raw socket).
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agentmx.events import http1
from agentmx.outbound import smtp_client
from agentmx.testing.certs import write_self_signed

COMMAND_TIMEOUT = 10.0  # the SMTP client's per-command timeout here (60 s in service)
LET_GO_WITHIN = 5.0  # seconds; before: the command timeout (QUIT), asyncio's 30 s close_notify wait, or never


class Peer:
    """One connection accepted and served by ``serve(sock)`` in a thread; ``ended`` is set when the
    client's TCP connection ends."""

    def __init__(self, serve: Callable[[socket.socket], socket.socket]) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.ended = threading.Event()
        self._serve = serve
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        sock, _ = self.listener.accept()
        served = self._serve(sock)
        raw = socket.socket(fileno=os.dup(served.fileno()))  # below TLS: sees FIN, never sends close_notify
        raw.settimeout(60)
        try:
            while raw.recv(65536):
                pass  # the client's close_notify, then its FIN
        except OSError:
            pass
        self.ended.set()
        raw.close()
        sock.close()


@pytest.fixture
def server_tls(tmp_path: Path) -> ssl.SSLContext:
    write_self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    return context


async def _until_ended(peer: Peer, started: float) -> bool:
    """Whether the client's connection ended within LET_GO_WITHIN; the loop runs meanwhile, as its
    transports are what let a socket go."""
    while not peer.ended.is_set() and time.monotonic() - started < LET_GO_WITHIN:
        await asyncio.sleep(0.05)
    return peer.ended.is_set()


def _smtp_peer(
    tls: ssl.SSLContext, quit_reply: bytes = b"221 bye\r\n", login: bool = False
) -> Callable[[socket.socket], socket.socket]:
    """STARTTLS, takes the message and answers QUIT with ``quit_reply`` (empty: nothing); with ``login``,
    offers AUTH and refuses every login. Then silent."""

    def serve(sock: socket.socket) -> socket.socket:
        plain = sock.makefile("rwb", buffering=0)
        plain.write(b"220 peer.test\r\n")
        plain.readline()
        plain.write(b"250-peer.test\r\n250 STARTTLS\r\n")
        plain.readline()
        plain.write(b"220 go ahead\r\n")
        session = tls.wrap_socket(sock, server_side=True)
        wire = session.makefile("rwb", buffering=0)
        wire.readline()
        wire.write(b"250-peer.test\r\n250 AUTH PLAIN\r\n" if login else b"250 peer.test\r\n")
        while line := wire.readline():
            verb = line[:4].upper()
            if verb == b"AUTH":
                wire.write(b"535 5.7.8 no\r\n")
                break
            if verb == b"QUIT":
                wire.write(quit_reply)
                break
            if verb == b"DATA":
                wire.write(b"354 go ahead\r\n")
                while wire.readline() not in (b".\r\n", b""):
                    pass
            wire.write(b"250 ok\r\n")
        return session

    return serve


async def _send(
    peer: Peer, starttls: str = "opportunistic", username: str = ""
) -> dict[str, smtp_client.Reply]:
    conn = smtp_client.Connection(
        "127.0.0.1", peer.port, "peer.test", "agentmx.test", starttls, username, "secret", COMMAND_TIMEOUT
    )
    envelope = smtp_client.Envelope("a@agentmx.test", "b@peer.test")
    return await smtp_client.send(conn, [envelope], b"Subject: x\r\n\r\nhi\r\n")


def test_smtp_peer_silent_at_quit_does_not_hold_the_caller(server_tls: ssl.SSLContext) -> None:
    peer = Peer(_smtp_peer(server_tls, quit_reply=b""))
    started = time.monotonic()
    replies = asyncio.run(_send(peer))
    assert replies["b@peer.test"].code == 250  # delivered: the unanswered QUIT changes nothing
    assert time.monotonic() - started < LET_GO_WITHIN


def test_smtp_socket_let_go_when_the_host_sends_no_close_notify(server_tls: ssl.SSLContext) -> None:
    peer = Peer(_smtp_peer(server_tls))

    async def test() -> None:
        started = time.monotonic()
        assert (await _send(peer))["b@peer.test"].code == 250
        assert await _until_ended(peer, started)

    asyncio.run(test())


def test_smtp_connection_refused_at_login_is_closed(server_tls: ssl.SSLContext) -> None:
    peer = Peer(_smtp_peer(server_tls, login=True))

    async def test() -> None:
        started = time.monotonic()
        with pytest.raises(smtp_client.HostUnusable, match="535"):
            await _send(peer, starttls="required", username="user")
        assert await _until_ended(peer, started)  # before: open until the host dropped it

    asyncio.run(test())


def _http_answers_then_silent(tls: ssl.SSLContext) -> Callable[[socket.socket], socket.socket]:
    def serve(sock: socket.socket) -> socket.socket:
        session = tls.wrap_socket(sock, server_side=True)
        head = b""
        while b"\r\n\r\n" not in head:
            head += session.recv(4096)
        session.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        return session

    return serve


def test_webhook_socket_let_go_when_the_receiver_sends_no_close_notify(
    server_tls: ssl.SSLContext, tmp_path: Path
) -> None:
    peer = Peer(_http_answers_then_silent(server_tls))

    async def post() -> int:
        http1._tls = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
        try:
            return await http1.post(f"https://127.0.0.1:{peer.port}/hook", b"{}", {}, 10.0)
        finally:
            http1._tls = None

    async def test() -> None:
        started = time.monotonic()
        assert await post() == 200
        assert time.monotonic() - started < 1  # the caller never waited for the close
        assert await _until_ended(peer, started)

    asyncio.run(test())
