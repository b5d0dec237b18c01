"""SQLite reads that may scan a large table run on worker threads, not on the event loop.

sqlite_inline runs statements on the loop thread, which is cheapest for indexed lookups. A search
or a filtered list reads rows until enough match, which in a large mailbox can be all of them: a
search over 75,000 messages held the loop for 150-450 ms (minutes with many words), and every other
request, WebSocket frame and job waited meanwhile. Those reads run here instead, on connections of
their own (WAL lets them read beside the loop's readers and the writer); sqlite3 lets go of the GIL
while SQLite steps a statement, so the loop goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from agentmx.db import sqlite_inline

T = TypeVar("T")

# More scans at once than this wait for a thread: each takes a CPU, and the loop needs one too.
SCANS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sqlite-scan")


async def run(conn: sqlite3.Connection, work: Callable[[], T]) -> T:
    """``work`` (statements on ``conn``) on a scan thread.

    Cancelled, it stops the statement (sqlite3's interrupt) and still waits for the thread to be done
    with ``conn``: the caller then rolls back or closes it, which must not happen under a statement.
    """
    job = SCANS.submit(work)
    done = asyncio.wrap_future(job)
    try:
        return await asyncio.shield(done)
    except asyncio.CancelledError:
        if not job.cancel():  # already running
            conn.interrupt()
            await _to_the_end(done)
        raise


async def _to_the_end(done: asyncio.Future[Any]) -> None:
    while not done.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait([done])
    if not done.cancelled():
        done.exception()  # most likely "interrupted": the caller sees its cancellation instead


class ThreadedConnection(sqlite_inline.InlineConnection):
    """An InlineConnection whose calls (execute, fetch, rollback) run on a scan thread."""

    async def _execute(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not self._running:
            raise ValueError("Connection closed")
        return await run(sqlite_inline.sqlite3_connection(self), functools.partial(fn, *args, **kwargs))


def async_creator(url: str) -> Callable[[], Any]:
    """sqlite_inline.async_creator, for connections whose statements run on scan threads."""
    connect = sqlite_inline.connector(url)

    async def create() -> sqlite_inline.InlineConnection:
        return await ThreadedConnection(connect)

    return create
