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
from agentmx.testing.certs import write_self_signed

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
