"""Core text() statements run on the driver's own connection (sqlite3, asyncpg), for the hot reads.

Through SQLAlchemy's async adapter a one-statement read pays for the Connection, its autobegin,
the execution context, a greenlet hop per cursor call and the Result machinery: more CPU than
SQLite needs to run the statement (bench/rest_read.py, py-spy). Here each statement is compiled
once per dialect by SQLAlchemy itself, and its rows go through the very result processors
SQLAlchemy would apply (UTCDateTime, JSON), so they hold the same values; only the plumbing
around the driver call is skipped. PostgreSQL connections still come from the engine's pool;
SQLite reads keep a few sqlite3 connections of their own (SQLiteReaders). db/bulk prepares its
INSERTs with the same DriverStatement.
"""

from __future__ import annotations

import sqlite3
from collections import namedtuple
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import Insert, Select
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.sql.selectable import TextualSelect

from agentmx.db import sqlite_inline, sqlite_scans
from agentmx.db.sync_calls import call_sync

Statement = Select[Any] | TextualSelect | TextClause | Insert


class DriverStatement:
    """One statement compiled for one dialect: its SQL, parameter order and row shaping."""

    def __init__(self, stmt: Statement, dialect: Dialect) -> None:
        compiled = stmt.compile(dialect=dialect)
        if compiled.post_compile_params:  # rendered per execution by SQLAlchemy, not here
            raise ValueError("driver_reads runs no expanding (IN-list) or literal_execute parameters")
        self.sql = compiled.string
        self.names: Sequence[str] = compiled.positiontup or ()
        binds = {name: compiled.binds[name].type._cached_bind_processor(dialect) for name in self.names}
        self.bind_processors = [(name, binds[name]) for name in self.names]
        # Values written into the statement (a text filter's pattern), for the names params lack.
        self.defaults = {
            name: compiled.binds[name].effective_value
            for name in self.names
            if compiled.binds[name].value is not None
        }
        # A plain text() has no declared columns: its row type is named from the first result.
        columns = list(stmt.selected_columns) if isinstance(stmt, Select | TextualSelect) else []
        self.row_type: Callable[..., Any] | None = None
        # (position, processor) of the columns that have one (a message list row: 4 of 13): a pass
        # over every value of every row took 0.25 ms of a 50-message page, this 0.18 ms.
        self.result_processors: list[tuple[int, Callable[[Any], Any]]] = []
        if columns:
            self.row_type = _row_type([str(c.key) for c in columns])
            processors = [c.type._cached_result_processor(dialect, None) for c in columns]
            self.result_processors = [(i, p) for i, p in enumerate(processors) if p is not None]

    def args(self, params: Mapping[str, Any] | None) -> list[Any]:
        if self.defaults:
            params = {**self.defaults, **(params or {})}
        if not params:
            return []
        return [params[name] if proc is None else proc(params[name]) for name, proc in self.bind_processors]

    def rows(self, raw: Sequence[Sequence[Any]], names: Callable[[], list[str]]) -> list[Any]:
        """Rows with the statement's column names as attributes (as a Row has), values processed."""
        make = self.row_type
        if make is None:
            if not raw:
                return []
            make = self.row_type = _row_type(names())
        procs = self.result_processors
        if not procs:
            return [make(*r) for r in raw]
        rows = []
        for r in raw:
            values = list(r)
            for i, process in procs:
                values[i] = process(values[i])
            rows.append(make(*values))
        return rows


def _row_type(names: list[str]) -> Callable[..., Any]:
    return namedtuple("DriverRow", names)  # field names known only at run time


class DriverResult:
    """The part of a SQLAlchemy Result the hot reads use."""

    def __init__(self, rows: list[Any]) -> None:
        self._rows = rows

    def first(self) -> Any:
        return self._rows[0] if self._rows else None

    def all(self) -> list[Any]:
        return self._rows

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)


class DriverConnection:
    """What the hot reads need of an AsyncConnection: ``dialect`` and ``execute``."""

    def __init__(self, driver: Any, dialect: Dialect) -> None:
        self.dialect = dialect
        self._driver = driver

    async def execute(self, stmt: Statement, params: Mapping[str, Any] | None = None) -> DriverResult:
        return await self.run(compiled(stmt, self.dialect), params)

    async def run(self, compiled: DriverStatement, params: Mapping[str, Any] | None = None) -> DriverResult:
        """A statement compiled by its user (who keeps it as long as it is used)."""
        args = compiled.args(params)
        if self.dialect.name == "sqlite":
            # On the loop while quick; a statement that scans is moved to a thread (db/sqlite_scans).
            found = sqlite_scans.fetch_inline(self._driver, compiled.sql, args)
            if found is None:
                found = await sqlite_scans.fetch_on_thread(self._driver, compiled.sql, args)
            raw, cursor = found
            return DriverResult(compiled.rows(raw, lambda: [d[0] for d in cursor.description]))
        records = await self._driver.fetch(compiled.sql, *args)
        return DriverResult(compiled.rows(records, lambda: list(records[0].keys())))


# Per dialect: id(statement) -> (statement, compiled). The hot statements are built once and live
# for the process, so this holds a handful of entries; the statement is kept to pin its id.
_compiled: dict[str, dict[int, tuple[Any, DriverStatement]]] = {}


def compiled(stmt: Statement, dialect: Dialect) -> DriverStatement:
    """``stmt`` compiled for ``dialect``, once for the process (a statement built once, at import)."""
    statements = _compiled.setdefault(dialect.name, {})
    found = statements.get(id(stmt))
    if found is None or found[0] is not stmt:
        found = statements[id(stmt)] = (stmt, DriverStatement(stmt, dialect))
    return found[1]


def connect(engine: AsyncEngine) -> _PostgresRead:
    """PostgreSQL: a connection of the engine's pool as asyncpg's own, in autocommit (each
    statement its own snapshot under READ COMMITTED, and no BEGIN/ROLLBACK round trips)."""
    return _PostgresRead(engine)


class _PostgresRead:
    """``async with connect(engine) as conn``: a class, not a generator, for the per-request cost.

    The pool's checkout and return run on a reused greenlet (db/sync_calls): a new greenlet for
    each was three quarters of their cost.
    """

    __slots__ = ("_engine", "_pooled")

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._pooled: Any = None

    async def __aenter__(self) -> DriverConnection:
        self._pooled = await call_sync(self._engine.sync_engine.raw_connection)
        # No transaction is started through SQLAlchemy's adapter, so its reset on return is a no-op.
        return DriverConnection(self._pooled.driver_connection, self._engine.dialect)

    async def __aexit__(self, _type: object, exc: BaseException | None, _tb: object) -> None:
        pooled, self._pooled = self._pooled, None
        try:
            if exc is not None and pooled.driver_connection.is_closed():
                # Lost (server restart, terminated backend). SQLAlchemy's execute would have seen the
                # disconnect and retired the pool's generation; without that, every pooled connection
                # would go on being handed out dead. Connections made before now reconnect on checkout.
                await call_sync(self._engine.sync_engine.pool._invalidate, pooled, exc)
        finally:
            await call_sync(pooled.close)


class SQLiteReaders:
    """SQLite: sqlite3 connections of the hot reads' own, each read inside a deferred BEGIN.

    Checking a connection out of SQLAlchemy's pool and back (its reset on return through the
    async adapter and a greenlet) took more CPU than the read's statement. Statements run inline
    (see sqlite_inline), so most reads end before another starts and one connection is enough; a
    read whose statement went to a scan thread keeps its own, and one that found none free opens another.
    """

    MAX_IDLE = 4

    def __init__(self, url: str, dialect: Dialect) -> None:
        self._connect = sqlite_inline.connector(url)
        self._dialect = dialect
        self._idle: list[sqlite3.Connection] = []

    def read(self) -> _SQLiteRead:
        return _SQLiteRead(self)

    def _checkout(self) -> sqlite3.Connection:
        if self._idle:
            return self._idle.pop()
        conn = self._connect()
        for pragma in sqlite_inline.PRAGMAS:
            conn.execute(pragma)
        return conn

    def _checkin(self, conn: sqlite3.Connection) -> None:
        try:
            conn.rollback()  # ends the read transaction
        except sqlite3.Error:
            conn.close()  # not reused: whatever broke it may not have been undone
            raise
        if len(self._idle) < self.MAX_IDLE:
            self._idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


class _SQLiteRead:
    """``async with readers.read() as conn``: a class, not a generator, for the per-request cost."""

    __slots__ = ("_conn", "_readers")

    def __init__(self, readers: SQLiteReaders) -> None:
        self._readers = readers
        self._conn: sqlite3.Connection | None = None

    async def __aenter__(self) -> DriverConnection:
        conn = self._readers._checkout()
        try:
            conn.execute("BEGIN")
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return DriverConnection(conn, self._readers._dialect)

    async def __aexit__(self, *exc: object) -> None:
        if self._conn is not None:
            self._readers._checkin(self._conn)
            self._conn = None
