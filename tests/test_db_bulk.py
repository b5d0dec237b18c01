"""db.bulk.insert_many stores what session.execute(insert(...)) stores, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TypeVar

import pytest
from sqlalchemy import Column, Integer, LargeBinary, MetaData, String, Table, insert, select

from agentmx.db.bulk import insert_many
from agentmx.db.engine import Database
from agentmx.db.types import JSONType, UTCDateTime

T = TypeVar("T")
METADATA = MetaData()
ROWS = Table(
    "bulk_rows",
    METADATA,
    Column("id", String(32), primary_key=True),
    Column("at", UTCDateTime),
    Column("doc", JSONType),
    Column("data", LargeBinary),
    Column("n", Integer),
)
DEFAULTED = Table(
    "bulk_defaulted", METADATA, Column("id", String(32), primary_key=True), Column("n", Integer, default=7)
)

# Values the inbound path writes, and one orjson refuses (stored through json.dumps instead).
DOCS: list[Any] = [
    {"to": ["ünïcode <a@example.com>"], "quote": '"\\', "nested": {"x": [1, None, True]}},
    ["a", "b"],
    {"big": 2**70 + 1, "small": -(2**64) - 3},  # past 64 bits: orjson would read a float
    None,
]


async def with_tables(url: str, work: Callable[[Database], Awaitable[T]]) -> T:
    """``work`` on a fresh Database holding the test tables (one event loop: asyncpg's pool is bound to it)."""
    db = Database(url)
    try:
        async with db.engine.begin() as conn:
            await conn.run_sync(METADATA.create_all)
        return await work(db)
    finally:
        await db.engine.dispose()
        await db.reader.dispose()


def rows(prefix: str) -> list[dict[str, Any]]:
    when = datetime(2026, 11, 30, 8, 0, 1, 123456, tzinfo=UTC)
    plus_one = timezone(timedelta(hours=1))
    return [
        {
            "id": f"{prefix}{i}",
            "at": [when, when.astimezone(plus_one), None][i % 3],
            "doc": doc,
            "data": bytes([i]) * 3 if i % 2 else None,
            "n": i,
        }
        for i, doc in enumerate(DOCS)
    ]


def test_insert_many_stores_what_an_orm_insert_stores(empty_database: str) -> None:
    async def run(db: Database) -> list[Any]:
        async with db.transaction() as session:
            await insert_many(session, insert(ROWS), rows("fast"))
            await session.execute(insert(ROWS), rows("orm"))
        async with db.read() as session:
            return list((await session.execute(select(ROWS).order_by(ROWS.c.n, ROWS.c.id))).all())

    found = asyncio.run(with_tables(empty_database, run))
    fast = [tuple(r)[1:] for r in found if r.id.startswith("fast")]
    orm = [tuple(r)[1:] for r in found if r.id.startswith("orm")]
    assert fast == orm
    assert [r[1] for r in fast] == DOCS


def test_insert_many_refuses_rows_leaving_out_a_defaulted_column(empty_database: str) -> None:
    async def run(db: Database) -> None:
        async with db.transaction() as session:
            await insert_many(session, insert(DEFAULTED), [{"id": "x"}])

    with pytest.raises(ValueError, match="'n'"):
        asyncio.run(with_tables(empty_database, run))
