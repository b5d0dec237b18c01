"""One PostgreSQL ``LISTEN`` connection per process, shared by every channel it listens on.

Processes sharing one database tell each other of commits with ``NOTIFY``: new events
(``events/hub.py``) and changes to what they cache (``services/cache_notify.py``). One connection
for all of them, so each process costs the database one connection beyond its pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.engine import make_url

log = logging.getLogger("agentmx.db")

# A connection gone half-open (a peer vanished without FIN or RST) is found by a ping unanswered, and
# replaced, within PING_EVERY + PING_TIMEOUT + RECONNECT_DELAY: 11 s (31 with one 15 s for both).
PING_EVERY = 5.0  # seconds idle between pings: one SELECT 1, next to nothing for the server
PING_TIMEOUT = 5.0  # seconds a ping may take; SELECT 1 takes milliseconds on a server that is up
RECONNECT_DELAY = 1.0

Handler = Callable[[str], None]  # called with a notification's payload


class Listener:
    def __init__(self, url: str) -> None:
        self.dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        self.name = f"agentmx listen {os.getpid()}"
        self._channels: dict[str, Handler] = {}
        # Called after each (re)connect: what was notified while not listening is not delivered.
        self._on_connect: list[Callable[[], None]] = []

    def add(self, channel: str, handler: Handler, on_connect: Callable[[], None]) -> None:
        """Listen on ``channel`` (before ``start``)."""
        self._channels[channel] = handler
        self._on_connect.append(on_connect)

    async def start(self) -> Callable[[], Awaitable[None]]:
        task = asyncio.create_task(self._run(), name="pg-listen")

        async def stop() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

        return stop

    async def _run(self) -> None:
        import asyncpg

        while True:
            try:
                # Named, so an operator (or a test) can tell it among the pool's connections.
                conn = await asyncpg.connect(self.dsn, server_settings={"application_name": self.name})
                try:
                    for channel, handler in self._channels.items():
                        await conn.add_listener(channel, _payload_to(handler))
                    # Woken when the connection ends (the server restarted, the backend was ended):
                    # listen again at once, not at the next ping.
                    closed = asyncio.Event()
                    conn.add_termination_listener(functools.partial(_set, closed))
                    for caught_up in self._on_connect:
                        caught_up()
                    while not conn.is_closed():
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(closed.wait(), PING_EVERY)
                        if not conn.is_closed():
                            # Bounded: on a half-open connection (a peer gone without a FIN) the ping
                            # would wait for the kernel's TCP timeout, minutes without NOTIFYs. TCP
                            # keepalive would not help: it probes only a link with nothing unanswered,
                            # and asyncpg does not set it.
                            await conn.execute("SELECT 1", timeout=PING_TIMEOUT)
                    raise ConnectionError("closed")
                finally:
                    conn.terminate()  # not close(): its goodbye could wait on that same dead connection
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("the LISTEN connection was lost (%r); reconnecting", exc)
                await asyncio.sleep(RECONNECT_DELAY)


def _set(event: asyncio.Event, _conn: Any) -> None:
    event.set()


def _payload_to(handler: Handler) -> Callable[..., None]:
    def listener(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            handler(payload)
        except Exception:  # one handler's bug must not end the connection's callbacks
            log.exception("a NOTIFY handler failed")

    return listener
