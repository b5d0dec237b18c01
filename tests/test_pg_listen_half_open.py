"""The LISTEN connection (db/listen.py) over a half-open link: the peer stops answering without a
FIN or RST (a NAT or firewall that forgot the flow, a host gone). Nothing on the socket says so,
so only the keepalive's bounded ping can find out; until it does, the process hears no NOTIFY
(stale caches, silent event streams). An unbounded ping waited for the kernel's TCP timeout.

A proxy between the listener and PostgreSQL makes the link go silent; new links through it
still work, as after a route has healed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Iterator

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from agentmx.db import listen
from agentmx.testing import postgres
from conftest import _postgres_or_skip

# Seconds, for listen's (5, 5 and 1 in production: the bound scales with them).
PING_EVERY = 1.0
PING_TIMEOUT = 0.5
RECONNECT_DELAY = 0.2
# Idle until the next ping, the ping's own timeout, the pause before reconnecting; plus slack
# for a loaded machine.
BOUND = PING_EVERY + PING_TIMEOUT + RECONNECT_DELAY + 4.0


class SilencingProxy:
    """Forwards TCP to PostgreSQL; ``silence()`` stops every open link both ways, leaving it open."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._silenced: list[asyncio.Event] = []  # one per link: set, it forwards nothing more
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._link, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def silence(self) -> None:
        for silenced in self._silenced:
            silenced.set()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for pipe in self._pipes:
            pipe.cancel()
        for writer in self._writers:
            writer.close()

    async def _link(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(*self.upstream)
        self._writers += [client_w, server_w]
        silenced = asyncio.Event()
        self._silenced.append(silenced)
        for reader, writer in ((client_r, server_w), (server_r, client_w)):
            pipe = asyncio.create_task(_pipe(reader, writer, silenced))
            self._pipes.add(pipe)
            pipe.add_done_callback(self._pipes.discard)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, silenced: asyncio.Event) -> None:
    while data := await reader.read(65536):
        if silenced.is_set():
            await asyncio.Future()  # hold it, and the link, until the proxy closes
        writer.write(data)
        await writer.drain()
    writer.close()


@pytest.fixture
def database() -> Iterator[str]:
    _postgres_or_skip()
    url = postgres.create_database("agentmx_listen")
    try:
        yield url
    finally:
        postgres.drop_database(url)


async def _until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} not within {timeout:.1f} s"
        await asyncio.sleep(0.05)


def test_a_half_open_listen_connection_is_replaced_within_the_ping_bound(
    database: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(listen, "PING_EVERY", PING_EVERY)
    monkeypatch.setattr(listen, "PING_TIMEOUT", PING_TIMEOUT)
    monkeypatch.setattr(listen, "RECONNECT_DELAY", RECONNECT_DELAY)
    channel = f"agentmx_test_{secrets.token_hex(4)}"
    heard: list[str] = []
    connects: list[float] = []

    async def notify(payload: str) -> None:  # straight to PostgreSQL, not through the proxy
        conn = await asyncpg.connect(database)
        try:
            await conn.execute("SELECT pg_notify($1, $2)", channel, payload)
        finally:
            await conn.close()

    async def scenario() -> None:
        url = make_url(database)
        proxy = SilencingProxy((url.host or "127.0.0.1", url.port or 5432))
        await proxy.start()
        proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        listener = listen.Listener(proxied)
        listener.add(channel, heard.append, on_connect=lambda: connects.append(time.monotonic()))
        stop = await listener.start()
        try:
            await _until(lambda: len(connects) == 1, 10, "the first LISTEN")
            await notify("before")
            await _until(lambda: "before" in heard, 5, "a NOTIFY through the proxy")

            proxy.silence()
            silenced_at = time.monotonic()
            await notify("unheard")  # held by the silent link
            await _until(lambda: len(connects) == 2, BOUND, "a new LISTEN after the link went silent")
            assert connects[1] - silenced_at <= BOUND

            await notify("after")
            await _until(lambda: "after" in heard, 5, "a NOTIFY on the new connection")
            assert "unheard" not in heard  # the link was silent indeed (on_connect covers the gap)
        finally:
            await proxy.close()  # first: an unbounded wait on the silent link ends with it
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop(), 10)

    caplog.set_level(logging.WARNING, logger=listen.log.name)
    asyncio.run(scenario())
    # The warning names what ended the link: a timed-out ping's TimeoutError has no message ("lost ()").
    assert any("TimeoutError" in record.getMessage() for record in caplog.records), caplog.text


def test_a_half_open_listen_connection_is_found_within_a_dozen_seconds() -> None:
    """Was 31 s: a ping every 15 s, waited for 15 s, and a second to reconnect. Measured with the proxy above
    at random moments: 26-30 s then, 6-10 s now (the bound less where in the idle time the link went silent)."""
    assert listen.PING_EVERY + listen.PING_TIMEOUT + listen.RECONNECT_DELAY <= 12
