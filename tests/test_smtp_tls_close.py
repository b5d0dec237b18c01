"""A TLS session whose client vanished (no close_notify, no FIN) is let go within seconds.

When the server ends such a session (here its command timeout), asyncio sends close_notify and
waits for the client's own; its default wait is 30 s, holding the socket and the client's place
under the connection caps all that time. Shown by the per-IP cap of 1: a newcomer from the same
address is refused (421) while the vanished session still counts, and greeted once it is let go.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable, Iterator

import pytest

from agentmx.testing.certs import unverified_client_context, write_self_signed
from agentmx.testing.server import ServerProcess, free_port

COMMAND_TIMEOUT = 2  # AGENTMX_SMTP_TIMEOUT: when the server gives up on the silent client
LET_GO_WITHIN = 8.0  # seconds: the timeout, a short close_notify wait and slack (asyncio's default wait: 30)


class Served:
    def __init__(self, server: ServerProcess, implicit_port: int) -> None:
        self.server, self.implicit_port = server, implicit_port


@pytest.fixture(scope="module", params=["0", "1"], ids=["in-process", "front-end"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp(f"tls-close-{request.param}")
    write_self_signed(tmp)
    implicit_port = free_port()
    env = {
        "AGENTMX_SMTP_TLS_CERT": str(tmp / "cert.pem"),
        "AGENTMX_SMTP_TLS_KEY": str(tmp / "key.pem"),
        "AGENTMX_SMTP_WORKERS": request.param,
        "AGENTMX_SMTP_TIMEOUT": str(COMMAND_TIMEOUT),
        "AGENTMX_SMTP_MAX_CONNECTIONS_PER_IP": "1",
        "AGENTMX_SUBMISSIONS_PORT": str(implicit_port),
    }
    server = ServerProcess(tmp / "data", env=env).start()
    try:
        yield Served(server, implicit_port)
    finally:
        server.stop()


def _read_reply(sock: socket.socket) -> bytes:
    """One reply, all its lines (a socket read may end inside one)."""
    reply = b""
    while not reply.endswith(b"\r\n") or reply.split(b"\r\n")[-2][3:4] == b"-":
        chunk = sock.recv(4096)
        if not chunk:
            break
        reply += chunk
    return reply


def _starttls_then_silent(port: int) -> socket.socket:
    """A session that asked for STARTTLS, got its 220 and never began the handshake."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    assert _read_reply(sock).startswith(b"220 ")
    sock.sendall(b"EHLO client.example\r\n")
    assert _read_reply(sock).startswith(b"250")
    sock.sendall(b"STARTTLS\r\n")
    assert _read_reply(sock).startswith(b"220 ")
    return sock


def _starttls(port: int) -> ssl.SSLSocket:
    """A session on ``port`` that went through STARTTLS."""
    return unverified_client_context().wrap_socket(_starttls_then_silent(port))


def _implicit_tls(port: int) -> ssl.SSLSocket:
    """A session on ``port`` with TLS from the first byte, greeted."""
    sock = unverified_client_context().wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10))
    assert _read_reply(sock).startswith(b"220 ")
    return sock


def _greeting(port: int, implicit_tls: bool) -> bytes:
    """A newcomer's first reply: 220, or 421 while the address is at its cap."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if implicit_tls:
        sock = unverified_client_context().wrap_socket(sock)
    with sock:
        return _read_reply(sock)


def _let_go_after(port: int, implicit_tls: bool, vanish: Callable[[int], socket.socket]) -> float:
    """Seconds from a client's vanishing mid-TLS until a newcomer from its address is greeted."""
    assert _greeting(port, implicit_tls).startswith(b"220 ")  # the address's one place is free
    vanished = vanish(port)  # silent from now on, its socket open: gone without a word
    try:
        started = time.monotonic()
        assert _greeting(port, implicit_tls).startswith(b"421 ")  # it holds the place
        while time.monotonic() - started < LET_GO_WITHIN:
            if _greeting(port, implicit_tls).startswith(b"220 "):
                return time.monotonic() - started
            time.sleep(0.2)
        pytest.fail(f"the vanished session still held its place after {LET_GO_WITHIN} s")
    finally:
        vanished.close()


def test_a_client_gone_after_starttls_is_let_go_within_seconds(served: Served) -> None:
    assert _let_go_after(served.server.smtp_port, False, _starttls) >= COMMAND_TIMEOUT - 0.5


def test_a_client_gone_from_implicit_tls_is_let_go_within_seconds(served: Served) -> None:
    assert _let_go_after(served.implicit_port, True, _implicit_tls) >= COMMAND_TIMEOUT - 0.5


def test_a_client_gone_before_its_starttls_handshake_is_let_go_within_seconds(served: Served) -> None:
    """Its command timeout cuts the handshake; asyncio's SSLProtocol then reports no lost connection
    to a session it never connected, and the session held its place for good (past its FIN too)."""
    assert _let_go_after(served.server.smtp_port, False, _starttls_then_silent) >= COMMAND_TIMEOUT - 0.5
