"""Multi-row INSERTs handed to the driver as tuples, for the hot tables of an inbound batch.

``session.execute(insert(table), rows)`` takes each row through the compiled statement's parameter
machinery (a dict of bind values per row, then a processor call per value): about a tenth of the
server's CPU per inbound message (py-spy). Here the INSERT is compiled once per dialect as the hot
reads' statements are (``driver_reads.DriverStatement``): each row becomes its values run through
the column types' own bind processors, so the stored values are the same, and the driver gets
them all in one ``executemany`` (``exec_driver_sql``, inside the session's transaction).

On PostgreSQL each statement is a round trip on the group commit's path (a batch waits for each
before the next), and a text that changes with the row count is parsed again on every pooled
connection. ``ArrayInsert`` writes any number of rows with one text (``unnest`` of one array per
column), and ``insert_all`` sends several such INSERTs as one statement.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Insert
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncSession

from agentmx.db.driver_reads import DriverStatement
from agentmx.db.sqlite_inline import on_sqlite, sqlite_driver

Rows = Sequence[Mapping[str, Any]]
# By dialect object, not name: a bind processor carries its dialect's settings (the JSON serializer).
_compiled: dict[tuple[Insert, Dialect], DriverStatement] = {}
_combined: dict[tuple[tuple[Insert, ...], Dialect], tuple[str, list[ArrayInsert]]] = {}


def _driver_statement(statement: Insert, dialect: Dialect) -> DriverStatement:
    compiled = _compiled.get((statement, dialect))
    if compiled is None:
        compiled = _compiled[(statement, dialect)] = DriverStatement(statement, dialect)
    return compiled


def _tuples(compiled: DriverStatement, statement: Insert, rows: Rows) -> list[tuple[Any, ...]]:
    try:
        return [tuple(compiled.args(row)) for row in rows]
    except KeyError as exc:
        raise ValueError(f"insert_many into {statement.table}: a row has no {exc}") from exc


async def insert_many(session: AsyncSession, statement: Insert, rows: Rows) -> None:
    """Execute ``statement`` (an INSERT with no values of its own) once per row.

    Each row holds every column of the table (as ``transient.column_values`` gives them): nothing
    is filled in from column defaults. A row without one raises ValueError naming it.
    """
    if not rows:
        return
    conn = await session.connection()
    driver = sqlite_driver(conn.sync_connection)
    if driver is not None:
        _executemany(driver, conn.dialect, statement, rows)
        return
    compiled = _driver_statement(statement, conn.dialect)
    await conn.exec_driver_sql(compiled.sql, _tuples(compiled, statement, rows))


def _executemany(driver: sqlite3.Connection, dialect: Dialect, statement: Insert, rows: Rows) -> None:
    compiled = _driver_statement(statement, dialect)
    on_sqlite(driver.executemany, compiled.sql, _tuples(compiled, statement, rows))


def _one_row(sql: str) -> tuple[str, list[str], str]:
    """A compiled one-row ``INSERT ... VALUES (...) ...`` as what comes before VALUES, the row's
    placeholders and what follows the row (ON CONFLICT, RETURNING); ValueError for anything else."""
    head, found, rest = sql.partition(" VALUES (")
    values, closed, tail = rest.partition(")")
    if not found or not closed:
        raise ValueError(f"not a one-row INSERT: {sql}")
    return head, values.split(", "), tail


# JSON travels as text and is cast per row: asyncpg's array of JSONB would go through its own codec.
_TEXT_SOURCED = ("JSON", "JSONB")


class ArrayInsert:
    """``statement`` for PostgreSQL as ``INSERT ... SELECT ... FROM unnest($n::type[], ...)``.

    One parameter per column (an array of every row's value, bind-processed as ``insert_many``
    does), numbered from ``first``; ``source`` is put in the FROM list before ``unnest``
    (``"some_cte, "``). What follows the VALUES clause (ON CONFLICT, RETURNING) is kept.
    """

    def __init__(self, statement: Insert, dialect: Dialect, *, first: int = 1, source: str = "") -> None:
        self.statement = statement
        self.compiled = DriverStatement(statement, dialect)
        head, placeholders, tail = _one_row(self.compiled.sql)
        if not all(p.startswith(f"${i + 1}::") for i, p in enumerate(placeholders)):
            raise ValueError(f"not a one-row INSERT with typed placeholders: {self.compiled.sql}")
        types = [p.split("::", 1)[1] for p in placeholders]
        self.width = len(types)
        arrays = ", ".join(
            f"${first + i}::{'TEXT' if t in _TEXT_SOURCED else t}[]" for i, t in enumerate(types)
        )
        picked = ", ".join(f"u.c{i}::{t}" if t in _TEXT_SOURCED else f"u.c{i}" for i, t in enumerate(types))
        aliases = ", ".join(f"c{i}" for i in range(self.width))
        self.sql = f"{head} SELECT {picked} FROM {source}unnest({arrays}) AS u({aliases}){tail}"

    def arrays(self, rows: Rows) -> list[list[Any]]:
        """The statement's parameters for ``rows``: one list per column."""
        if not rows:
            return [[] for _ in range(self.width)]
        return [list(column) for column in zip(*_tuples(self.compiled, self.statement, rows), strict=True)]


async def insert_all(session: AsyncSession, parts: Sequence[tuple[Insert, Rows]]) -> None:
    """``insert_many`` of each part, in order; on PostgreSQL all of them in one statement.

    The parts of one call site should always be the same statements (empty rows included): the
    SQL text is then one, parsed once per pooled connection. Foreign keys are checked at the end of
    a statement, so a part may reference rows of another.
    """
    conn = await session.connection()
    driver = sqlite_driver(conn.sync_connection)
    if driver is not None:  # SQLite: each part's executemany, on the connection asked for once
        for statement, rows in parts:
            if rows:
                _executemany(driver, conn.dialect, statement, rows)
        return
    if not any(rows for _, rows in parts):
        return
    key = (tuple(statement for statement, _ in parts), conn.dialect)
    combined = _combined.get(key)
    if combined is None:
        combined = _combined[key] = _combine(key[0], conn.dialect)
    sql, inserts = combined
    params = [array for part, (_, rows) in zip(inserts, parts, strict=True) for array in part.arrays(rows)]
    await conn.exec_driver_sql(sql, tuple(params))


def _combine(statements: tuple[Insert, ...], dialect: Dialect) -> tuple[str, list[ArrayInsert]]:
    """One statement: every INSERT but the last in a WITH (each runs once, to completion), the last after it."""
    inserts: list[ArrayInsert] = []
    first = 1
    for statement in statements:
        inserts.append(ArrayInsert(statement, dialect, first=first))
        first += inserts[-1].width
    *before, last = inserts
    sql = last.sql
    if before:
        sql = "WITH " + ", ".join(f"i{n} AS ({part.sql})" for n, part in enumerate(before)) + " " + sql
    return sql, inserts


class ValuesInsert:
    """``statement`` (an INSERT naming each column once, as ``VALUES (?, ...)``, perhaps with RETURNING)
    for qmark dialects (SQLite) as one multi-row VALUES; its text is built once per row count."""

    # 100 rows of a few columns stays under SQLite's oldest limit of 999 parameters a statement.
    CHUNK = 100

    def __init__(self, statement: Insert, dialect: Dialect) -> None:
        self.statement = statement
        self.compiled = DriverStatement(statement, dialect)
        head, placeholders, self._tail = _one_row(self.compiled.sql)
        if placeholders != ["?"] * len(self.compiled.names):
            raise ValueError(f"not a one-row INSERT with qmark placeholders: {self.compiled.sql}")
        self._head, self._row = head + " VALUES ", f"({', '.join(placeholders)})"
        self._texts: dict[int, str] = {}

    def sql(self, count: int) -> str:
        text = self._texts.get(count)
        if text is None:
            text = self._texts[count] = self._head + ", ".join([self._row] * count) + self._tail
        return text

    def run(self, conn: Connection, rows: Rows) -> list[Any]:
        """Insert ``rows``; returns what RETURNING names, for all chunks (in no promised order)."""
        out: list[Any] = []
        driver = sqlite_driver(conn)
        for start in range(0, len(rows), self.CHUNK):
            chunk = _tuples(self.compiled, self.statement, rows[start : start + self.CHUNK])
            params = tuple(value for row in chunk for value in row)
            sql = self.sql(len(chunk))
            if driver is None:
                out.extend(conn.exec_driver_sql(sql, params).all())
            else:
                out.extend(on_sqlite(driver.execute, sql, params).fetchall())
        return out


_values_inserts: dict[tuple[Insert, Dialect], ValuesInsert] = {}


def insert_returning(conn: Connection, statement: Insert, rows: Rows) -> list[Any]:
    """``ValuesInsert(statement).run`` on a synchronous connection (a session's, in a commit hook),
    compiled once per statement and dialect. Each row holds every column the statement names (a
    row without one raises ValueError naming it, as in ``insert_many``)."""
    if not rows:
        return []
    key = (statement, conn.dialect)
    found = _values_inserts.get(key)
    if found is None:
        found = _values_inserts[key] = ValuesInsert(statement, conn.dialect)
    return found.run(conn, rows)
