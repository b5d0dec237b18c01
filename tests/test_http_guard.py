"""Slow and excess HTTP connections (http/guard.py): the API stays up under an HTTP slowloris.

A connection must send its request headers within AGENTMX_HTTP_HEADER_TIMEOUT, dribbling or not;
at AGENTMX_HTTP_MAX_CONNECTIONS a newcomer from a less crowded address displaces the longest-waiting
connection of the most crowded one. Requests, keep-alive and WebSocket streams are unaffected.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import httpx

from agentmx.testing.server import ServerProcess


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _connect(server: ServerProcess, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.http_port), timeout=10, source_address=(source, 0))


def test_headers_dribbled_past_the_deadline_are_cut_off(fresh_server: Callable[..., ServerProcess]) -> None:
    server = fresh_server(env={"AGENTMX_HTTP_HEADER_TIMEOUT": "1.5"}).start()
    silent = _connect(server)
    dribbler = _connect(server)
    dribbler.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    closed = False
    while time.monotonic() - started < 6:
        try:
            dribbler.sendall(b"X")  # a header byte every 0.2 s: never a complete request head
        except OSError:
            closed = True
            break
        if _closed_within(dribbler, 0.2):
            closed = True
            break
    assert closed and time.monotonic() - started < 4
    assert _closed_within(silent, 3)
    assert httpx.get(server.base_url + "/health").status_code == 200  # others are served


def _get_health(sock: socket.socket, f: Any) -> int:
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
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
        for _ in range(4):  # one connection for 4 s, past the 2 s deadline, under uvicorn's 5 s keep-alive
            assert _get_health(sock, f) == 200
            time.sleep(1)
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
    assert _closed_within(_connect(server, source="127.0.0.2"), 3)
    # From another address, newcomers take the places of the crowd's longest-waiting connections.
    with httpx.Client(base_url=server.base_url) as first, httpx.Client(base_url=server.base_url) as second:
        assert first.get("/health").status_code == 200
        assert second.get("/health").status_code == 200  # while the first is kept alive
    closed = [n for n, sock in enumerate(crowd) if _closed_within(sock, 0.3)]
    assert closed == [0, 1]
    for sock in crowd:
        sock.close()
