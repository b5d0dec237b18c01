"""Engine and unit of work. One transaction per request, inbound message or job."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.exc import DisconnectionError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from agentmx.db import sqlite_inline
from agentmx.settings import normalize_database_url

AfterCommit = Callable[[], Awaitable[None] | None]
WRITE_LOCK_TIMEOUT = 30.0  # seconds a writer waits for another in-process writer
PING_AFTER_IDLE = 2.0  # seconds: PostgreSQL connections idle longer are pinged at checkout


def make_engine(url: str, *, writer: bool = True) -> AsyncEngine:
    if url.startswith("sqlite"):
        # sqlite3 calls run on the loop thread (see sqlite_inline). AsyncSession returns its
        # connection from a separate task, so under load many are checked out at once; connections
        # past pool_size are closed on return and reopened (schema parse, pragmas): keep it large.
        engine = create_async_engine(
            url, async_creator=sqlite_inline.async_creator(url), pool_size=64, max_overflow=64
        )

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _begin(conn: Any) -> None:
            # Writers take the lock up front: a deferred read that later writes fails with
            # SQLITE_BUSY at once instead of waiting on busy_timeout. Readers never block (WAL).
            conn.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")

        return engine
    # Overflow connections are closed on return; a pool smaller than the request concurrency
    # reconnects constantly (bench/rest_read.py at 64 connections: CPU per request -33%).
    engine = create_async_engine(url, pool_size=30, max_overflow=10)

    @event.listens_for(engine.sync_engine, "checkin")
    def _checked_in(_dbapi_conn: Any, record: Any) -> None:
        record.info["checked_in"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _ping_if_idle(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        # pool_pre_ping, but only for connections idle a while: a ping on every checkout was a
        # round trip per transaction, and one used a moment ago is as good as just pinged.
        idle_since = record.info.get("checked_in")
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE:
            return
        try:
            dbapi_conn.ping()
        except Exception as exc:
            raise DisconnectionError("stale pooled connection") from exc  # the pool reconnects

    return engine


class Database:
    def __init__(self, url: str) -> None:
        url = normalize_database_url(url)
        self.url = url
        self.engine = make_engine(url)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        # SQLite gets a second engine whose transactions never take the write lock.
        self.reader = make_engine(url, writer=False) if url.startswith("sqlite") else self.engine
        self.read_sessions = async_sessionmaker(self.reader, expire_on_commit=False)
        # SQLite has one writer at a time; queueing writers here (not in SQLite's busy handler)
        # is what lets sqlite_inline run statements on the loop thread without deadlocking.
        self._write_lock = asyncio.Lock() if url.startswith("sqlite") else None

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

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A read-only unit of work: never blocks writers, never writes."""
        # Closing (not rolling back) ends the transaction and keeps loaded rows readable.
        async with self.read_sessions() as session:
            yield session

    async def ping(self) -> None:
        async with self.reader.connect() as conn:  # the writer engine would take the write lock
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()
        if self.reader is not self.engine:
            await self.reader.dispose()


def after_commit(session: AsyncSession, hook: AfterCommit) -> None:
    """Run ``hook`` once the session's transaction has committed (never on rollback)."""
    session.info.setdefault("after_commit", []).append(hook)
