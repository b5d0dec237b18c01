"""Database.read sessions end cleanly whether or not they queried; UTCDateTime's one-call SQLite bind
writes the text SQLAlchemy's two processors write (times are compared as text on SQLite)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.types import TypeDecorator

from agentmx.db.engine import Database
from agentmx.db.types import UTCDateTime


def _database(tmp_path: Path) -> Database:
    return Database(f"sqlite:///{tmp_path / 'reads.db'}")


def test_read_sessions_return_their_connections_and_keep_rows_readable(tmp_path: Path) -> None:
    async def run() -> tuple[list[int], list[Any]]:
        db = _database(tmp_path)
        try:
            async with db.engine.begin() as conn:
                await conn.execute(text("CREATE TABLE t (n INTEGER)"))
                await conn.execute(text("INSERT INTO t VALUES (1), (2)"))
            checked_out = []
            async with db.read():  # never queries: holds no connection
                checked_out.append(db.reader.pool.checkedout())
            async with db.read() as session:
                found = (await session.execute(text("SELECT n FROM t ORDER BY n"))).all()
                checked_out.append(db.reader.pool.checkedout())
            checked_out.append(db.reader.pool.checkedout())
            with pytest.raises(RuntimeError):
                async with db.read() as session:
                    await session.execute(text("SELECT 1"))
                    raise RuntimeError("the caller's error")
            checked_out.append(db.reader.pool.checkedout())
            return checked_out, [tuple(r) for r in found]
        finally:
            await db.dispose()
            await db.engine.dispose()
            await db.reader.dispose()

    checked_out, found = asyncio.run(run())
    assert checked_out == [0, 1, 0, 0]
    assert found == [(1,), (2,)]


def test_utc_datetime_sqlite_bind_matches_the_composed_processors(tmp_path: Path) -> None:
    db = _database(tmp_path)
    dialect = db.engine.dialect
    column = UTCDateTime()
    fast = column._cached_bind_processor(dialect)
    composed = TypeDecorator.bind_processor(column.dialect_impl(dialect), dialect)
    assert fast is not None and composed is not None and fast is not composed
    east, west = timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))
    values: list[datetime | None] = [None]
    for naive in (
        datetime(2026, 12, 2, 6, 30, 1, 123456),
        datetime(2026, 12, 2, 6, 30, 1),  # no microseconds: still six digits
        datetime(1, 1, 1, 0, 0, 0, 1),  # years below 1000: four digits
        datetime(9999, 12, 31, 23, 59, 59, 999999),
    ):
        values += [naive, naive.replace(tzinfo=UTC)]
        if datetime(1, 1, 2) < naive < datetime(9999, 12, 30):
            values += [naive.replace(tzinfo=east), naive.replace(tzinfo=west)]
    for value in values:
        assert fast(value) == composed(value), value
