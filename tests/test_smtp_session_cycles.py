"""An ended SMTP session is freed at once, not left in reference cycles for the garbage collector.

aiosmtpd's session keeps tables of its own bound methods, its stream writer (which points back at
it) and, after QUIT, a cancelled task whose traceback holds its frames: ~45 objects a session that
only a collection freed, a young collection every 16 messages or so in a front end. Real sessions
over loopback against the listener, with the collector off.
"""

from __future__ import annotations

import asyncio
import gc
import smtplib
import weakref
from typing import Any

from agentmx.settings import Settings
from agentmx.smtp.limits import HookNames, LimitedSMTP
from agentmx.smtp.listener import listen
from agentmx.testing.server import free_port

SESSIONS = 5


class Recorded(LimitedSMTP):
    """The listener's protocol, each session's instance watched through a weak reference."""

    sessions: list[weakref.ref[LimitedSMTP]] = []

    def __init__(self, handler: Any, **kw: Any) -> None:
        super().__init__(handler, **kw)
        Recorded.sessions.append(weakref.ref(self))


def _send(port: int, quit_politely: bool) -> None:
    smtp = smtplib.SMTP("127.0.0.1", port, timeout=30)
    smtp.sendmail("a@example.com", ["b@example.net"], b"Subject: hi\r\n\r\nhello\r\n")
    if quit_politely:
        smtp.quit()
    else:  # the client just goes: the connection is lost in the middle of the session
        smtp.close()


async def _sessions() -> None:
    port = free_port()
    settings = Settings(smtp_host="127.0.0.1")
    stop = await listen(HookNames(), settings, port=port, protocol=Recorded)
    try:
        for n in range(SESSIONS):
            await asyncio.to_thread(_send, port, quit_politely=n % 2 == 0)
        for _ in range(100):  # connection_lost comes a turn or two after the client's close
            if all(ref() is None for ref in Recorded.sessions):
                break
            await asyncio.sleep(0.01)
    finally:
        await stop()


def test_an_ended_session_is_freed_without_the_garbage_collector() -> None:
    Recorded.sessions.clear()
    gc.collect()
    gc.disable()
    try:
        asyncio.run(_sessions())
        left = sum(ref() is not None for ref in Recorded.sessions)
    finally:
        gc.enable()
    assert len(Recorded.sessions) == SESSIONS
    assert left == 0
