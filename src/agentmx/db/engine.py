"""Engine and unit of work. One transaction per request, inbound message or job."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.exc import DisconnectionError, OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import QueuePool

from agentmx.db import driver_reads, sqlite_inline, sqlite_scans
from agentmx.db.driver_reads import DriverConnection
from agentmx.db.types import json_dumps, json_loads
from agentmx.settings import normalize_database_url

AfterCommit = Callable[[], Awaitable[None] | None]
WRITE_LOCK_TIMEOUT = 30.0  # seconds a writer waits for another in-process writer
IDLE_PING_AFTER = 5.0  # seconds idle after which a pooled PostgreSQL connection is pinged on checkout


def make_engine(url: str, *, writer: bool = True, scans: bool = False, pool_size: int = 40) -> AsyncEngine:
    if url.startswith("sqlite"):
        # scans: reads that may scan a table, run on worker threads instead (db/sqlite_scans).
        creator = sqlite_scans.async_creator(url) if scans else sqlite_inline.async_creator(url)
        # sqlite3 calls run on the loop thread (see sqlite_inline). AsyncSession returns its
        # connection from a separate task, so under load many are checked out at once; connections
        # past pool_size are closed on return and reopened (schema parse, pragmas): keep it large.
        engine = create_async_engine(
            url,
            async_creator=creator,
            pool_size=64,
            max_overflow=64,
            json_serializer=json_dumps,
            json_deserializer=json_loads,
        )

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            for pragma in sqlite_inline.PRAGMAS:
                cur.execute(pragma)
            cur.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _begin(conn: Any) -> None:
            # Writers take the lock up front: a deferred read that later writes fails with
            # SQLITE_BUSY at once instead of waiting on busy_timeout. Readers never block (WAL).
            if writer:
                # Straight to sqlite3 as well (~50 us a write transaction); it can fail (another
                # process holds the lock past busy_timeout): wrapped as SQLAlchemy would.
                sqlite_inline.begin_immediate(conn.connection.driver_connection)
            else:
                # A deferred BEGIN cannot fail: sent straight to sqlite3, not through a statement's
                # whole execution path (~60 us, a tenth of a GET message).
                sqlite_inline.begin_deferred(conn.connection.driver_connection)

        return engine
    # Overflow connections are closed on return; a pool smaller than the request concurrency
    # reconnects constantly (bench/rest_read.py at 64 connections: CPU per request -33%). Even
    # 30 + 10 overflow kept reconnecting once the hot reads got faster (py-spy: asyncpg connect in
    # 4% of GET thread's samples): a fixed number of connections (40 by default), none of them overflow.
    # Last in, first out: a FIFO pool cycled through all 40, so each statement was prepared (a round
    # trip) on each of them, and a checkout often found its connection idle past IDLE_PING_AFTER and
    # pinged it (three round trips): ~130 pings a bench/ws_latency.py run, 23-47 with LIFO. The most
    # recently used connection has its statements prepared and was alive a moment ago.
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=0,
        pool_use_lifo=True,
        json_serializer=json_dumps,
        json_deserializer=json_loads,
    )
    _ping_when_idle(engine)
    _unreachable_is_a_lost_connection(engine)
    return engine


def _ping_when_idle(engine: AsyncEngine) -> None:
    """pool_pre_ping, but only for connections idle over IDLE_PING_AFTER seconds.

    asyncpg's pre-ping is three round trips (BEGIN, ";", ROLLBACK) on every checkout, as much as the
    read it guards. A busy pool's connections were just used; an idle one may have been dropped
    (server restart, firewall timeout): that one is pinged and, if dead, replaced before use.
    """

    @event.listens_for(engine.sync_engine, "checkin")
    def _checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < IDLE_PING_AFTER:
            return
        try:
            dbapi_conn.ping()
        except Exception as exc:
            raise DisconnectionError("connection failed its ping after being idle") from exc


def _unreachable_is_a_lost_connection(engine: AsyncEngine) -> None:
    """A server that refuses or drops new connections (down, restarting) fails like a lost one.

    asyncpg raises the socket's OSError, which SQLAlchemy passed on as it was: requests were
    answered 500 while PostgreSQL was down, where a connection it closed gets 503 and Retry-After.
    Raised as the driver's error with SQLSTATE 08001 (unable to connect), it is wrapped and
    retryable as those are.
    """

    @event.listens_for(engine.sync_engine, "do_connect")
    def _connect(dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        try:
            return dialect.connect(*cargs, **cparams)
        except OSError as exc:
            error = dialect.loaded_dbapi.OperationalError(str(exc), exc)
            error.pgcode = error.sqlstate = "08001"
            raise error from exc


class Database:
    def __init__(self, url: str, pool_size: int = 40) -> None:
        url = normalize_database_url(url)
        self.url = url
        self.engine = make_engine(url, pool_size=pool_size)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        # SQLite gets a second engine whose transactions never take the write lock.
        self.reader = make_engine(url, writer=False) if url.startswith("sqlite") else self.engine
        self.read_sessions = async_sessionmaker(self.reader, expire_on_commit=False)
        # And a third for reads that may scan a large table (searches): off the loop thread.
        self.scanner = make_engine(url, writer=False, scans=True) if url.startswith("sqlite") else self.engine
        self.scan_sessions = async_sessionmaker(self.scanner, expire_on_commit=False)
        # SQLite has one writer at a time; queueing writers here (not in SQLite's busy handler)
        # is what lets sqlite_inline run statements on the loop thread without deadlocking.
        self._write_lock = asyncio.Lock() if url.startswith("sqlite") else None
        self._sqlite_readers = (
            driver_reads.SQLiteReaders(url, self.reader.dialect) if url.startswith("sqlite") else None
        )

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """Commit on success, roll back on error, then run the session's after-commit hooks."""
        lock = self._write_lock
        if lock is not None:
            try:
                await asyncio.wait_for(lock.acquire(), WRITE_LOCK_TIMEOUT)
            except TimeoutError as exc:  # what SQLite's own busy timeout used to raise
                raise OperationalError(
                    "BEGIN IMMEDIATE", {}, sqlite3.OperationalError("database is locked")
                ) from exc
        try:
            async with self.sessions() as session:
                try:
                    yield session
                    await session.commit()
                except BaseException:
                    await session.rollback()
                    raise
        finally:
            if lock is not None:
                lock.release()
        for hook in session.info.get("after_commit", []):
            result = hook()
            if result is not None:
                await result

    def has_spare_connection(self) -> bool:
        """Whether the pool can lend a connection now, without waiting for one to come back: for a
        shortcut that is worth no wait (a pool of one, or one taken up by requests)."""
        pool = self.reader.pool
        # PostgreSQL's pool has no overflow (make_engine): its size is all it lends.
        return not isinstance(pool, QueuePool) or pool.checkedout() < pool.size()

    @asynccontextmanager
    async def read(self, *, may_scan: bool = False) -> AsyncIterator[AsyncSession]:
        """A read-only unit of work: never blocks writers, never writes.

        ``may_scan``: its statements may read a large part of a table (a search); on SQLite they
        then run on worker threads, not the loop's (db/sqlite_scans).
        """
        session = (self.scan_sessions if may_scan else self.read_sessions)()
        try:
            yield session
        finally:
            # Closing (not rolling back) ends the transaction and keeps loaded rows readable. A
            # session that never began one holds no connection and no rows: its close (a task of
            # its own, ~30 us) is skipped, as for most inbound messages (answered from caches).
            if session.in_transaction() or session.identity_map:
                await session.__aexit__(None, None, None)

    @asynccontextmanager
    async def read_connection(self) -> AsyncIterator[AsyncConnection]:
        """A read-only Core connection, for reads that skip the ORM session (the hottest ones,
        GET message and thread, go further: read_driver).

        PostgreSQL reads run in autocommit: under READ COMMITTED each statement takes its own
        snapshot anyway, and BEGIN/ROLLBACK would be two more round trips. SQLite keeps its BEGIN,
        which holds one snapshot across the statements of a read.
        """
        async with self.reader.connect() as conn:
            if not self.is_sqlite:
                await conn.execution_options(isolation_level="AUTOCOMMIT")
            yield conn

    def read_driver(self) -> AbstractAsyncContextManager[DriverConnection]:
        """read_connection's snapshot rules on the driver's own connection (db/driver_reads)."""
        if self._sqlite_readers is not None:
            return self._sqlite_readers.read()
        return driver_reads.connect(self.reader)

    async def ping(self) -> None:
        async with self.reader.connect() as conn:  # the writer engine would take the write lock
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        if self._sqlite_readers is not None:
            self._sqlite_readers.close()
        await self.engine.dispose()
        for engine in (self.reader, self.scanner):
            if engine is not self.engine:
                await engine.dispose()


def after_commit(session: AsyncSession, hook: AfterCommit) -> None:
    """Run ``hook`` once the session's transaction has committed (never on rollback)."""
    session.info.setdefault("after_commit", []).append(hook)
