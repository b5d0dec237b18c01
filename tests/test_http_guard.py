"""Slow and excess HTTP connections (http/guard.py): the API stays up under an HTTP slowloris.

A connection must send its request headers within AGENTMX_HTTP_HEADER_TIMEOUT, dribbling or not, and
its body at AGENTMX_HTTP_BODY_MIN_RATE over each such window;
at AGENTMX_HTTP_MAX_CONNECTIONS a newcomer from a less crowded address displaces the longest-waiting
connection of the most crowded one. Requests, keep-alive and WebSocket streams are unaffected.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import httpx
import pytest

from agentmx.http.guard import HttpGuard
from agentmx.http.listener import GuardedListener
from agentmx.testing.server import ServerProcess

HEAD_DEADLINE = {"AGENTMX_HTTP_HEADER_TIMEOUT": "1.5"}
BODY_RATE = HEAD_DEADLINE | {"AGENTMX_HTTP_BODY_MIN_RATE": "1000"}


def _shared_server(tmp: Path, env: dict[str, str]) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp, env=env).start()
    try:
        yield server
    finally:
        server.kill()


# One server per setting for the tests of this file that only use their own connections (none counts
# the server's connections or reads its log): a start each is most of what they cost.
@pytest.fixture(scope="module")
def head_deadline_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from _shared_server(tmp_path_factory.mktemp("head-deadline"), HEAD_DEADLINE)


@pytest.fixture(scope="module")
def body_rate_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from _shared_server(tmp_path_factory.mktemp("body-rate"), BODY_RATE)


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _dribbled_until_closed(sock: socket.socket, chunk: bytes, give_up_after: float) -> float:
    """Send ``chunk`` every 0.2 s until the server closes the connection; seconds it took (inf if never)."""
    started = time.monotonic()
    while time.monotonic() - started < give_up_after:
        try:
            sock.sendall(chunk)
        except OSError:
            return time.monotonic() - started
        if _closed_within(sock, 0.2):
            return time.monotonic() - started
    return float("inf")


def _connect(server: ServerProcess, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.http_port), timeout=10, source_address=(source, 0))


def test_headers_dribbled_past_the_deadline_are_cut_off(head_deadline_server: ServerProcess) -> None:
    server = head_deadline_server
    silent = _connect(server)
    dribbler = _connect(server)
    dribbler.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    assert _dribbled_until_closed(dribbler, b"X", 6) < 4  # a header byte every 0.2 s: never a whole head
    assert _closed_within(silent, 3)
    assert httpx.get(server.base_url + "/health").status_code == 200  # others are served


def _get_health(sock: socket.socket, f: Any) -> int:
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
    return _read_response(f)


def _read_response(f: Any) -> int:
    """One whole response from the socket's file: its status (the body is read and dropped)."""
    status = int(f.readline().split()[1])
    length = 0
    while (line := f.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    f.read(length)
    return status


def test_a_keep_alive_client_is_not_cut_off_between_requests(
    fresh_server: Callable[..., ServerProcess],
) -> None:
    server = fresh_server(env={"AGENTMX_HTTP_HEADER_TIMEOUT": "2"}).start()
    with _connect(server) as sock, sock.makefile("rb") as f:
        for _ in range(4):  # one connection for 4 s, past the 2 s deadline
            assert _get_health(sock, f) == 200
            time.sleep(1)
        assert _get_health(sock, f) == 200


def test_an_idle_keep_alive_connection_outlasts_the_clients_own_expiry(
    fresh_server: Callable[..., ServerProcess],
) -> None:
    # httpx (the SDK) drops an idle connection after 5 s: a server closing at the same 5 s raced its
    # next request, which then found a reset. The server keeps it longer, so the client ends it first.
    server = fresh_server().start()
    with _connect(server) as sock, sock.makefile("rb") as f:
        assert _get_health(sock, f) == 200
        time.sleep(6)
        assert _get_health(sock, f) == 200


def test_at_the_cap_a_newcomer_displaces_the_crowded_address(
    fresh_server: Callable[..., ServerProcess],
) -> None:
    env = {"AGENTMX_HTTP_MAX_CONNECTIONS": "10", "AGENTMX_HTTP_HEADER_TIMEOUT": "300"}
    server = fresh_server(env=env).start()
    crowd = []
    for _ in range(10):  # the whole cap, from one address, none sending a request
        crowd.append(_connect(server, source="127.0.0.2"))
        time.sleep(0.05)  # a known waiting order
    # From the crowded address, a newcomer is turned away and the crowd stays as it was.
    assert _newcomer_reset(server, "127.0.0.2", 3)
    # From another address, newcomers take the places of the crowd's longest-waiting connections.
    with httpx.Client(base_url=server.base_url) as first, httpx.Client(base_url=server.base_url) as second:
        assert first.get("/health").status_code == 200
        assert second.get("/health").status_code == 200  # while the first is kept alive
    closed = [n for n, sock in enumerate(crowd) if _closed_within(sock, 0.3)]
    assert closed == [0, 1]
    for sock in crowd:
        sock.close()


def _reset_within(sock: socket.socket, seconds: float) -> bool:
    """The server ended the connection with a reset (not a FIN) within ``seconds``."""
    sock.settimeout(seconds)
    try:
        sock.recv(1)
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return False


def _newcomer_reset(server: ServerProcess, source: str, seconds: float) -> bool:
    """A new connection from ``source`` that the server resets within ``seconds``. On a loaded machine
    the reset can arrive before ``connect()`` has returned, which then raises it."""
    try:
        sock = _connect(server, source)
    except ConnectionResetError:
        return True
    with sock:
        return _reset_within(sock, seconds)


def test_a_newcomer_turned_away_at_the_cap_is_reset(fresh_server: Callable[..., ServerProcess]) -> None:
    # A reset frees the server's socket at once: a close would leave it in TIME_WAIT for a minute,
    # thousands a second under an attack that reconnects after every close.
    env = {"AGENTMX_HTTP_MAX_CONNECTIONS": "3", "AGENTMX_HTTP_HEADER_TIMEOUT": "300"}
    server = fresh_server(env=env).start()
    crowd = [_connect(server, source="127.0.0.2") for _ in range(3)]
    time.sleep(0.2)
    assert _newcomer_reset(server, "127.0.0.2", 3)  # from the crowded address
    assert _newcomer_reset(server, "127.0.0.2", 3)
    with httpx.Client(base_url=server.base_url) as client:  # a newcomer from elsewhere displaces one
        assert client.get("/health").status_code == 200
    assert [_reset_within(sock, 0.3) for sock in crowd] == [True, False, False]
    for sock in crowd:
        sock.close()


def test_a_newcomer_one_behind_the_crowd_does_not_displace_it(
    fresh_server: Callable[..., ServerProcess],
) -> None:
    # Displacing here would put 127.0.0.3 ahead, and the crowd's next reconnect would displace one of
    # it back: under an attack from several addresses, connections traded back and forth without end.
    env = {"AGENTMX_HTTP_MAX_CONNECTIONS": "5", "AGENTMX_HTTP_HEADER_TIMEOUT": "300"}
    server = fresh_server(env=env).start()
    crowd = []
    for source in ("127.0.0.2", "127.0.0.2", "127.0.0.2", "127.0.0.3", "127.0.0.3"):
        crowd.append(_connect(server, source=source))
        time.sleep(0.05)  # a known waiting order
    assert _newcomer_reset(server, "127.0.0.3", 3)
    assert not any(_reset_within(sock, 0.3) for sock in crowd)
    # From an address with nothing waiting, a newcomer still displaces the crowd's oldest.
    with httpx.Client(base_url=server.base_url) as client:
        assert client.get("/health").status_code == 200
    assert [_reset_within(sock, 0.3) for sock in crowd] == [True, False, False, False, False]
    for sock in crowd:
        sock.close()


def test_one_accept_batch_lets_through_no_more_than_the_cap() -> None:
    # asyncio accepts a batch before any connection_made runs: the ones let through count at once.
    guard = HttpGuard(max_connections=3, header_timeout=300)
    guard.connections = set()  # uvicorn's, before the batch's connections are made
    with socket.create_server(("127.0.0.1", 0), backlog=16) as sock:
        listener = GuardedListener.wrap(sock, guard)
        listener.setblocking(False)
        clients = [socket.create_connection(listener.getsockname(), timeout=10) for _ in range(5)]
        admitted = []
        with pytest.raises(BlockingIOError):
            while True:
                admitted.append(listener.accept()[0])
        assert len(admitted) == 3
        assert [_reset_within(client, 3) for client in clients] == [False, False, False, True, True]
        for conn in admitted + clients + [listener]:
            conn.close()


def _connect_and_reset(server: ServerProcess, source: str) -> None:
    """A connection the client resets at once: the server's connection_made finds no peer address."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", server.http_port))
    sock.close()


def test_connections_reset_by_their_clients_do_not_fill_the_cap(
    fresh_server: Callable[..., ServerProcess],
) -> None:
    # Each counts as pending from accept() until its connection_made: counted by the address uvicorn
    # reads there, which a reset connection has none of, they stayed until the guard's next tick, and
    # an attacker holding no connection at all turned everyone away.
    env = {"AGENTMX_HTTP_MAX_CONNECTIONS": "3", "AGENTMX_HTTP_HEADER_TIMEOUT": "300"}
    server = fresh_server(env=env).start()
    with httpx.Client(base_url=server.base_url) as client:
        assert client.get("/health").status_code == 200
    for _ in range(5):  # a round outlives the guard's tick now and then: five would not all
        for _ in range(10):  # a reset that comes after connection_made (a quick server) leaks nothing
            _connect_and_reset(server, "127.0.0.2")
        time.sleep(0.05)  # the resets accepted before the newcomer (one batch would count them all)
        with httpx.Client(base_url=server.base_url) as client:
            assert client.get("/health").status_code == 200


def test_past_the_head_deadline_an_unanswered_connection_is_reset_an_answered_one_closed(
    head_deadline_server: ServerProcess,
) -> None:
    server = head_deadline_server
    silent = _connect(server)
    answered = _connect(server)
    with answered.makefile("rb") as f:
        assert _get_health(answered, f) == 200
        assert _reset_within(silent, 4)
        # After a response, a normal close: a reset could drop the response's last bytes in flight.
        answered.settimeout(4)
        assert answered.recv(1) == b""


def _post_head(path: str, length: int, key: str = "") -> bytes:
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    return (
        f"POST {path} HTTP/1.1\r\nHost: test\r\n{auth}Content-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def test_a_body_dribbled_below_the_min_rate_is_cut_off(body_rate_server: ServerProcess) -> None:
    server = body_rate_server
    key = server.create_key()
    dribbler = _connect(server)
    dribbler.sendall(_post_head("/v0/inboxes", 100_000, key))
    silent = _connect(server)  # a head that announces a body, then nothing
    silent.sendall(_post_head("/v0/inboxes", 10, key))
    assert _dribbled_until_closed(dribbler, b" " * 50, 8) < 5  # 250 B/s against 1,000
    assert _closed_within(silent, 3)


def test_a_slow_body_at_the_min_rate_is_served(body_rate_server: ServerProcess) -> None:
    server = body_rate_server
    key = server.create_key()
    body = b'{"username": "slowbody"' + b" " * 11_976 + b"}"
    sock = _connect(server)
    sock.sendall(_post_head("/v0/inboxes", len(body), key))
    started = time.monotonic()
    for i in range(0, len(body), 1_000):  # 2,000 B/s: over four timeouts in all
        sock.sendall(body[i : i + 1_000])
        time.sleep(0.5)
    assert time.monotonic() - started > 4 * 1.5
    f = sock.makefile("rb")
    assert int(f.readline().split()[1]) == 200
    sock.close()


def test_the_rest_of_an_unread_body_does_not_lift_the_head_deadline(
    head_deadline_server: ServerProcess,
) -> None:
    server = head_deadline_server
    sock = _connect(server)
    sock.sendall(_post_head("/v0/inboxes", 5) + b"{}")  # no key: answered before the body is read
    f = sock.makefile("rb")
    assert _read_response(f) == 401
    sock.sendall(b"   ")  # the body's end, after the response; then no next request
    assert _closed_within(sock, 5)


class _StubConnection:
    """What the guard reads of uvicorn's protocol: address, transport, flow control, cycle."""

    def __init__(self, name: str, aborted: list[str]) -> None:
        self.client = ("10.0.0.1", 1)
        self.transport = SimpleNamespace(abort=lambda: aborted.append(name), get_extra_info=lambda name: None)
        self.flow = SimpleNamespace(read_paused=False)
        self.cycle = None


def test_a_body_held_up_by_the_server_gets_a_new_window() -> None:
    guard = HttpGuard(max_connections=10, header_timeout=2.0, body_min_rate=100)
    aborted: list[str] = []
    paused, slow = (cast(Any, _StubConnection(name, aborted)) for name in ("paused", "slow"))
    for c in (paused, slow):
        guard.admit(c, 1, now=0.0)
        guard.body_expected(c, now=0.0)
    paused.flow.read_paused = True  # uvicorn stopped reading: the app has not taken the body yet
    guard.body_received(slow, 150, now=1.0)  # under the 200 bytes a 2 s window needs
    assert guard.sweep(now=2.5) == 1 and aborted == ["slow"]
    paused.flow.read_paused = False
    assert guard.sweep(now=4.0) == 0  # its window restarted at 2.5
    assert guard.sweep(now=4.6) == 1 and aborted == ["slow", "paused"]
