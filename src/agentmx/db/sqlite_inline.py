"""SQLite on the event loop thread: aiosqlite's API without its worker thread.

aiosqlite runs every sqlite3 call on a per-connection thread and wakes the loop when it is done.
SQLAlchemy makes several such calls per statement (cursor, execute, fetch, description), so a
request costs tens of thread hand-offs that outweigh the microseconds SQLite itself needs for an
indexed lookup. Measured with bench/rest_read.py: CPU per GET thread fell by about half.

Running inline is safe because nothing waits while the loop is blocked:
  * readers in WAL mode never wait for a lock;
  * writers are serialised in-process by ``Database.transaction`` (an asyncio.Lock), so a
    BEGIN IMMEDIATE only waits for another process (the CLI), and only for that process's short
    transaction.
The cost: a slow query (a full scan) now blocks the loop for its duration instead of a thread.
COMMIT is the exception: it waits on the disk (the WAL's fsync), not the CPU, so it goes to a
thread; inbound SMTP took 10-30% more messages a second that way.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import aiosqlite
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from agentmx.db import text_match


class _InlineQueue:
    """Stands in for the queue to aiosqlite's worker thread (SQLAlchemy uses it directly)."""

    def put_nowait(self, item: tuple[Any, Callable[[], Any]]) -> None:
        future, function = item
        try:
            result = function()
        except BaseException as exc:
            if future is not None:
                future.set_exception(exc)
            return
        if future is not None:
            future.set_result(result)


class InlineConnection(aiosqlite.Connection):
    def __init__(self, connector: Callable[[], sqlite3.Connection], iter_chunk_size: int = 64) -> None:
        super().__init__(connector, iter_chunk_size)
        self._tx = _InlineQueue()  # type: ignore[assignment]

    async def _execute(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not self._running or self._connection is None:
            raise ValueError("Connection closed")
        return fn(*args, **kwargs)

    async def commit(self) -> None:
        # A write's COMMIT waits for the WAL's fsync: in a thread the loop goes on meanwhile (the
        # writer lock keeps this connection to itself until the commit returns).
        if not self._running or self._connection is None:
            raise ValueError("Connection closed")
        done = asyncio.get_running_loop().run_in_executor(_COMMITS, self._connection.commit)
        await _outlive_cancellation(done)

    async def _connect(self) -> InlineConnection:
        if self._connection is None:
            self._connection = self._connector()
        return self

    def __await__(self) -> Generator[Any, None, InlineConnection]:
        return self._connect().__await__()

    def stop(self) -> None:
        self._running = False
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def close(self) -> None:
        self.stop()


# Commits get their own thread: in the loop's default pool they could queue behind slow work
# (DNS lookups, parsing) while the writer lock is held. One writer at a time needs one thread.
_COMMITS = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-commit")


async def _outlive_cancellation(work: asyncio.Future[None]) -> None:
    """Await ``work`` to its end even when cancelled; the cancellation then reaches the caller
    at its next await, after it has seen the commit's outcome.

    A caller that went on at once would roll back on this connection while the thread still
    commits on it, and would take a commit that succeeded for a failure.
    """
    cancelled = False
    while True:
        try:
            await asyncio.shield(work)
            break
        except asyncio.CancelledError:
            cancelled = True
            if work.done():
                break
    if cancelled:
        task = asyncio.current_task()
        if task is not None:
            task.cancel()
    work.result()


def sqlite3_connection(conn: InlineConnection) -> sqlite3.Connection:
    """The sqlite3 connection itself: calls on it run inline anyway, without aiosqlite's wrapping."""
    if conn._connection is None:
        raise ValueError("Connection closed")
    return conn._connection


def sqlite_driver(conn: Connection | None) -> sqlite3.Connection | None:
    """The sqlite3 connection under a session's ``conn`` (inside its transaction), None elsewhere.

    A statement runs there inline anyway (db/sqlite_inline); sent to it directly it skips
    SQLAlchemy's execution path (an execution context, a cursor through the async adapter, a
    result): about 50 us a statement, of which an inbound batch runs a handful.
    """
    if conn is None or conn.dialect.name != "sqlite":
        return None
    return sqlite3_connection(cast(InlineConnection, conn.connection.driver_connection))


def on_sqlite(call: Any, sql: str, params: Any) -> Any:
    """``call(sql, params)`` on a sqlite3 connection, its errors wrapped as SQLAlchemy wraps them
    (IntegrityError, OperationalError, ...: what callers and ``db.retryable`` look for)."""
    try:
        return call(sql, params)
    except sqlite3.Error as exc:
        raise DBAPIError.instance(sql, params, exc, sqlite3.Error) from exc


def begin_deferred(conn: InlineConnection) -> None:
    """BEGIN on the sqlite3 connection itself (the engine's "begin" hook, for read transactions)."""
    sqlite3_connection(conn).execute("BEGIN")


def begin_immediate(conn: InlineConnection) -> None:
    """BEGIN IMMEDIATE on the sqlite3 connection itself (the engine's "begin" hook, for writers)."""
    on_sqlite(sqlite3_connection(conn).execute, "BEGIN IMMEDIATE", ())


# Every connection's settings (the engine's "connect" hook; db/driver_reads' own readers).
PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=30000",
    # SQLite's default checkpoints at 1,000 pages (4 MB) of WAL: inbound mail writes about 25 KB
    # per 4 KB message, so every 160 messages a commit, and each writer queued behind it, waited
    # for pages to be copied and both files fsynced. At 10,000 pages (40 MB) pages rewritten
    # meanwhile are copied once: ingest +12-20% (BENCHMARKS.md), DATA->250 p99 +8-14 ms.
    "PRAGMA wal_autocheckpoint=10000",
)


def connector(url: str) -> Callable[[], sqlite3.Connection]:
    """Opens a sqlite3 connection to a sqlite+aiosqlite:/// URL's file, PRAGMAS not yet applied."""
    path = url.split(":///", 1)[1]

    def connect() -> sqlite3.Connection:
        # isolation_level=None: autocommit at the driver, so the engine's "begin" hook picks the lock mode.
        conn = sqlite3.connect(path, timeout=30, check_same_thread=False, isolation_level=None)
        text_match.register(conn)
        return conn

    return connect


def async_creator(url: str) -> Callable[[], Any]:
    """An ``async_creator`` for create_async_engine from a sqlite+aiosqlite:/// URL."""
    connect = connector(url)

    async def create() -> InlineConnection:
        return await InlineConnection(connect)

    return create
