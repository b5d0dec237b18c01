"""SQLite reads that scan a large table run on worker threads, not on the event loop.

sqlite_inline runs statements on the loop thread, which is cheapest for indexed lookups. A search
or a filtered list reads rows until enough match, which in a large mailbox can be all of them: a
search over 75,000 messages held the loop for 150-450 ms (seconds with many words), and every other
request, WebSocket frame and job waited meanwhile. sqlite3 lets go of the GIL while SQLite steps a
statement, so on a thread the loop goes on (WAL lets readers read beside the writer):
  * searches run on connections whose statements all go to a thread (Database.read(may_scan=True));
  * the driver reads (db/driver_reads: lists, GET message and thread) start on the loop, and a
    statement still running after INLINE_BUDGET is stopped and run again on a thread, in the same
    transaction, so it sees the same snapshot and returns the same rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from agentmx.db import sqlite_inline

T = TypeVar("T")

# More scans at once than this wait for a thread: each takes a CPU, and the loop needs one too.
SCANS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sqlite-scan")
INLINE_BUDGET = 0.005  # seconds a driver read's statement may hold the loop
# SQLite VM steps between looks at the clock: a list page takes 1-2 looks. One step can be slow (a
# lower() and LIKE over a whole body, ~3 us), so 10,000 could overrun the budget several times.
CHECK_EVERY = 1000

Fetched = tuple[list[Any], sqlite3.Cursor]


def fetch_inline(conn: sqlite3.Connection, sql: str, args: Sequence[Any]) -> Fetched | None:
    """The statement's rows and cursor, or None if it ran past INLINE_BUDGET and was stopped.

    For reads only: an interrupted write rolls back its whole transaction.
    """
    deadline = time.perf_counter() + INLINE_BUDGET
    over = False

    def past_deadline() -> bool:
        nonlocal over
        over = time.perf_counter() > deadline
        return over

    conn.set_progress_handler(past_deadline, CHECK_EVERY)
    try:
        return _fetch(conn, sql, args)
    except sqlite3.OperationalError:
        if not over:
            raise
        # A read-only statement that is interrupted leaves its transaction (and snapshot) open.
        return None
    finally:
        conn.set_progress_handler(None, 0)


async def fetch_on_thread(conn: sqlite3.Connection, sql: str, args: Sequence[Any]) -> Fetched:
    return await run(conn, functools.partial(_fetch, conn, sql, args))


def _fetch(conn: sqlite3.Connection, sql: str, args: Sequence[Any]) -> Fetched:
    cursor = conn.execute(sql, args)
    return cursor.fetchall(), cursor


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


# The calls in which SQLite steps a statement. The others (cursor, close, a read's rollback) are
# quick and stay inline: a trip to a thread and back costs about 0.1 ms of CPU.
STEPPING = frozenset({"execute", "executemany", "executescript", "fetchone", "fetchmany", "fetchall"})


class ThreadedConnection(sqlite_inline.InlineConnection):
    """An InlineConnection whose statements run on a scan thread."""

    async def _execute(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not self._running:
            raise ValueError("Connection closed")
        conn = sqlite_inline.sqlite3_connection(self)
        if getattr(fn, "__name__", None) not in STEPPING:
            return fn(*args, **kwargs)
        return await run(conn, functools.partial(fn, *args, **kwargs))


def async_creator(url: str) -> Callable[[], Any]:
    """sqlite_inline.async_creator, for connections whose statements run on scan threads."""
    connect = sqlite_inline.connector(url)

    async def create() -> sqlite_inline.InlineConnection:
        return await ThreadedConnection(connect)

    return create
