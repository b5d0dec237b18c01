"""Slow and excess HTTP connections: deadlines for request headers and bodies, and a connection cap.

uvicorn closes a keep-alive connection 15 s after a response (server.HTTP_KEEP_ALIVE), but a connection that has not yet
sent a complete request head has no deadline at all, and a byte every few seconds keeps it open:
enough such connections (slowloris) use up the open-file limit, and then SMTP, HTTP and the
database all fail to open sockets or files. So, as Apache's mod_reqtimeout and nginx's
client_header_timeout do, a request's headers must arrive within AGENTMX_HTTP_HEADER_TIMEOUT.
A body dribbled a byte at a time would do the same, so, as mod_reqtimeout's MinRate, its bytes must
keep coming at AGENTMX_HTTP_BODY_MIN_RATE on average: each window of that timeout must bring
min rate x timeout bytes (or the rest of the body). A window found overdue while the server is
the one not reading (uvicorn's flow control, or a 100-continue the app has not asked for yet)
starts again instead.

At AGENTMX_HTTP_MAX_CONNECTIONS, as at the SMTP cap (smtp/limits.py), a newcomer from an address
(an IPv6 /64 counting as one, client_address.py) with fewer connections waiting for their headers
or body than the most crowded address takes the place of that address's longest-waiting connection
(the likeliest slowloris); a newcomer from the most crowded address is closed. Displacing within
the crowd would only trade one of its connections for another, and double the reconnects it
answers with (bench/http_slowloris.py). So is a newcomer from an address just one behind: it would
put its address ahead, and the next reconnect from the other would displace one of it back, over and
over for as long as an attack from several addresses lasts (one whose count does not divide the
cap). Only an address with nothing waiting displaces one just one ahead of it.

A client that asks for a download and stops reading holds its connection, a chunk and the open file
for as long as it likes: uvicorn waits for writes to resume without a deadline. As nginx's
send_timeout, writes that stay paused (the transport's buffer full because the client's window is
closed) for AGENTMX_HTTP_SEND_TIMEOUT reset the connection. Each resume starts the clock again, so
a slow reader that keeps reading is not cut off.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from agentmx.client_address import address_group
from agentmx.http.errors import error_body
from agentmx.http.reset import reset
from agentmx.periodic import run_every

log = logging.getLogger("agentmx.http")

MAX_HEAD_BYTES = 64 * 1024  # request line and header fields; nginx's default is 32 KB

BAD_REQUEST = (
    b"400 Bad Request",
    error_body(
        "ValidationError", "validation_error", "Invalid HTTP request", "Send a well-formed HTTP/1.1 request."
    ),
)
HEAD_TOO_LARGE = (
    b"431 Request Header Fields Too Large",
    error_body("ValidationError", "validation_error", "Request line and header fields exceed 64 KB"),
)


def _ip(conn: HttpToolsProtocol) -> str:
    return address_group(conn.client[0]) if conn.client else ""


def _announces_body(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() not in (b"0", b"")):
            return True
    return False


def give_up(conn: HttpToolsProtocol) -> None:
    """Close a connection the guard will not wait for any longer.

    Never answered, it is reset: nothing of ours is in flight, and the kernel frees the socket at once
    instead of keeping it in TIME_WAIT for a minute, which an attack that reconnects after every close
    would fill with tens of thousands. After a response, an abort (its bytes may still be in the
    kernel's buffer, which a reset would drop); abort, not close: close() would wait for a client
    that does not read to drain asyncio's buffer.
    """
    if getattr(conn, "answered", False):
        conn.transport.abort()
    else:
        reset(conn.transport)


def _server_not_reading(conn: HttpToolsProtocol) -> bool:
    """The body is late because of us: reading is paused, or the client waits for 100 Continue."""
    cycle = conn.cycle
    return bool(conn.flow.read_paused or (cycle is not None and cycle.waiting_for_100_continue))


class HttpGuard:
    def __init__(
        self, max_connections: int, header_timeout: float, body_min_rate: int = 0, send_timeout: float = 0
    ) -> None:
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.send_timeout = send_timeout
        # Connections whose writes are paused, by when they paused (oldest first).
        self.stalled: dict[HttpToolsProtocol, float] = {}
        # Connections waiting for a request head or body, by when their window started. Insertion
        # order is waiting order, so the oldest is first; the same again per client address.
        self.waiting: dict[HttpToolsProtocol, float] = {}
        self.waiting_by_ip: dict[str, dict[HttpToolsProtocol, float]] = {}
        # Of those, the ones reading a body: bytes received in the current window.
        self.body_bytes: dict[HttpToolsProtocol, int] = {}
        self.window_bytes = int(body_min_rate * header_timeout) if body_min_rate > 0 else 0
        # uvicorn's set of open connections, once the first is made: the count turns_away() reads.
        self.connections: set[Any] | None = None
        # Newcomers let through at accept() whose connection_made has not run yet: an accept batch
        # runs before any of them is counted in ``connections`` or ``waiting_by_ip``. By socket
        # descriptor, not by the address uvicorn reads in connection_made: a client that resets
        # first has none there (getpeername fails), and its count would stay.
        self.pending: dict[int, str] = {}  # descriptor: address group
        self.pending_by_group: dict[str, int] = {}

    def _crowd_to_displace(self, group: str) -> dict[HttpToolsProtocol, float] | None:
        """At the cap: the most crowded address's waiting connections, if a newcomer from ``group``
        may take the place of one; None when the newcomer is turned away."""
        mine = len(self.waiting_by_ip.get(group, ())) + self.pending_by_group.get(group, 0)
        crowded = max(self.waiting_by_ip.values(), key=len, default={})
        # One behind, the newcomer's address would lead after it (see the module's docstring).
        return crowded if len(crowded) > mine + 1 or (mine == 0 and crowded) else None

    def turns_away(self, ip: str, fd: int) -> bool:
        """Whether a newcomer from ``ip`` is closed now (http/listener.py asks at accept() with its
        socket's descriptor); one let through counts as pending until its connection_made."""
        if self.connections is None:
            return False
        self._drop_pending(fd)  # accept() hands out a descriptor again once its socket is closed
        group = address_group(ip)
        at_cap = len(self.connections) + len(self.pending) >= self.max_connections
        if at_cap and self._crowd_to_displace(group) is None:
            return True
        self.pending[fd] = group
        self.pending_by_group[group] = self.pending_by_group.get(group, 0) + 1
        return False

    def made(self, conn: HttpToolsProtocol) -> None:
        """``conn``'s connection_made: no longer pending."""
        if self.pending:  # never on uvloop, which accepts without asking turns_away()
            sock = conn.transport.get_extra_info("socket")
            if sock is not None:
                self._drop_pending(sock.fileno())

    def _drop_pending(self, fd: int) -> None:
        group = self.pending.pop(fd, None)
        if group is None:
            return
        if (count := self.pending_by_group[group]) == 1:
            del self.pending_by_group[group]
        else:
            self.pending_by_group[group] = count - 1

    def forget_pending(self) -> None:
        """Drop the pending counts: any left from before the last tick never reached connection_made
        (asyncio closes a socket whose transport fails), and must not keep turning newcomers away."""
        self.pending.clear()
        self.pending_by_group.clear()

    def admit(self, conn: HttpToolsProtocol, live: int, now: float) -> bool:
        """A new connection, ``live`` counting it; False when it must be closed."""
        if live > self.max_connections:
            crowded = self._crowd_to_displace(_ip(conn))
            if crowded is None:
                return False
            oldest = next(iter(crowded))
            self.done(oldest)
            give_up(oldest)
        self.wait(conn, now)
        return True

    def wait(self, conn: HttpToolsProtocol, now: float) -> None:
        self.done(conn)  # to the end of the order (and out of the body's count)
        self.waiting[conn] = now
        self.waiting_by_ip.setdefault(_ip(conn), {})[conn] = now

    def body_expected(self, conn: HttpToolsProtocol, now: float) -> None:
        """The request head is in and announces a body: its first window starts."""
        if self.window_bytes:
            self.wait(conn, now)
            self.body_bytes[conn] = 0

    def body_received(self, conn: HttpToolsProtocol, size: int, now: float) -> None:
        """Body bytes arrived: a window's worth starts the next window."""
        got = self.body_bytes.get(conn)
        if got is None:
            return
        got += size
        if got >= self.window_bytes:
            self.wait(conn, now)
            got = 0
        self.body_bytes[conn] = got

    def done(self, conn: HttpToolsProtocol) -> None:
        self.body_bytes.pop(conn, None)
        if self.waiting.pop(conn, None) is None:
            return
        ip = _ip(conn)
        peers = self.waiting_by_ip[ip]
        del peers[conn]
        if not peers:
            del self.waiting_by_ip[ip]

    def writes_paused(self, conn: HttpToolsProtocol, now: float) -> None:
        if self.send_timeout > 0:
            self.stalled.setdefault(conn, now)

    def writes_resumed(self, conn: HttpToolsProtocol) -> None:
        self.stalled.pop(conn, None)

    def sweep_stalled(self, now: float) -> int:
        """Reset the connections whose writes stayed paused past the send timeout; returns how many."""
        overdue = []
        for conn, since in self.stalled.items():
            if now - since < self.send_timeout:
                break
            overdue.append(conn)
        for conn in overdue:
            self.writes_resumed(conn)
            reset(conn.transport)
        return len(overdue)

    def sweep(self, now: float) -> int:
        """Close the connections whose head or body window is overdue; returns how many."""
        if self.header_timeout <= 0:
            return 0
        overdue, held_up = [], []
        for conn, since in self.waiting.items():
            if now - since < self.header_timeout:
                break
            if conn in self.body_bytes and _server_not_reading(conn):
                held_up.append(conn)
            else:
                overdue.append(conn)
        for conn in held_up:  # a new window from here: the client was not the slow one
            self.wait(conn, now)
            self.body_bytes[conn] = 0
        for conn in overdue:
            self.done(conn)
            give_up(conn)
        return len(overdue)

    def start(self, interval: float = 1.0) -> Callable[[], Awaitable[None]]:
        """Run sweep() every ``interval`` seconds; returns the coroutine function that stops it."""

        def tick(now: float) -> None:
            self.forget_pending()
            if closed := self.sweep(now):
                log.info("closed %d HTTP connections slow to send their request", closed)
            if stalled := self.sweep_stalled(now):
                log.info("reset %d HTTP connections that stopped reading their response", stalled)

        return run_every(interval, tick)

    def protocol(self) -> type[HttpToolsProtocol]:
        """uvicorn's httptools protocol, reporting to this guard."""
        guard = self

        class GuardedHttpProtocol(HttpToolsProtocol):
            reading_head = True  # from the connection's start or a response until a head is complete
            head_bytes = 0
            parsed_head_bytes = 0  # of the request line and header fields the parser has handed over
            head_too_large = False
            answered = False  # a response has been sent (give_up)

            def connection_made(self, transport: Any) -> None:
                super().connection_made(transport)
                guard.connections = self.connections
                guard.made(self)
                if not guard.admit(self, len(self.connections), self.loop.time()):
                    reset(transport)  # a newcomer from the crowded address: see give_up

            def on_url(self, url: bytes) -> None:
                self.count_head(len(url))
                super().on_url(url)

            def on_header(self, name: bytes, value: bytes) -> None:
                self.count_head(len(name) + len(value) + 4)  # ": " and CRLF
                super().on_header(name, value)

            def count_head(self, size: int) -> None:
                # A head that arrives in one read is parsed before data_received can count it.
                # Raised here, the parser stops and refuses the request (send_400_response).
                self.parsed_head_bytes += size
                if self.parsed_head_bytes > MAX_HEAD_BYTES:
                    self.head_too_large = True
                    raise ValueError("request head over MAX_HEAD_BYTES")

            def on_headers_complete(self) -> None:
                self.reading_head, self.head_bytes, self.parsed_head_bytes = False, 0, 0
                guard.done(self)
                super().on_headers_complete()
                if _announces_body(self.headers) and not self.parser.should_upgrade():
                    guard.body_expected(self, self.loop.time())

            def on_body(self, body: bytes) -> None:
                super().on_body(body)
                guard.body_received(self, len(body), self.loop.time())

            def on_message_complete(self) -> None:
                # Only a body's window ends here: the rest of a body the app answered without
                # reading arrives after the response, when the head deadline must still hold.
                if self in guard.body_bytes:
                    guard.done(self)
                super().on_message_complete()
                self.reading_head = True  # what comes next is the next request's head

            def on_response_complete(self) -> None:
                self.answered = True
                super().on_response_complete()
                if self.timeout_keep_alive_task is not None:  # idle until the next request
                    guard.wait(self, self.loop.time())

            def pause_writing(self) -> None:
                super().pause_writing()
                guard.writes_paused(self, self.loop.time())

            def resume_writing(self) -> None:
                super().resume_writing()
                guard.writes_resumed(self)

            def connection_lost(self, exc: Exception | None) -> None:
                guard.done(self)
                guard.writes_resumed(self)
                super().connection_lost(exc)

            def data_received(self, data: bytes) -> None:
                # httptools buffers a request head whole, however long: past MAX_HEAD_BYTES still
                # inside one, the connection is refused instead (the count starts again per request).
                if self.reading_head:
                    self.head_bytes += len(data)
                super().data_received(data)
                if self.reading_head and self.head_bytes > MAX_HEAD_BYTES and not self.transport.is_closing():
                    self.refuse(HEAD_TOO_LARGE)

            def send_400_response(self, msg: str) -> None:
                # What the parser refuses (an unknown method, raw bytes outside ASCII in the target,
                # a control character in a header, broken chunking) in the API's error shape too.
                self.refuse(HEAD_TOO_LARGE if self.head_too_large else BAD_REQUEST)

            def refuse(self, answer: tuple[bytes, dict[str, Any]]) -> None:
                status, error = answer
                body = json.dumps(error).encode()
                content = [b"HTTP/1.1 " + status + b"\r\n"]
                for name, value in self.server_state.default_headers:
                    content.extend([name, b": ", value, b"\r\n"])
                content.extend(
                    [
                        b"content-type: application/json\r\n",
                        b"content-length: " + str(len(body)).encode() + b"\r\n",
                        b"connection: close\r\n\r\n",
                        body,
                    ]
                )
                self.transport.write(b"".join(content))
                self.transport.close()

        return GuardedHttpProtocol
