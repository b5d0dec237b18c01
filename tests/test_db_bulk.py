"""db.bulk.insert_many and insert_all store what session.execute(insert(...)) stores, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TypeVar

import pytest
from sqlalchemy import Column, ForeignKey, Integer, LargeBinary, MetaData, String, Table, insert, select
from sqlalchemy.dialects import postgresql, sqlite

from agentmx.db.bulk import insert_all, insert_many
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
CHILDREN = Table(
    "bulk_children",
    METADATA,
    Column("id", String(32), primary_key=True),
    Column("parent", ForeignKey("bulk_rows.id"), nullable=False),
)
TOUCHED = Table("bulk_touched", METADATA, Column("key", String(32), primary_key=True), Column("n", Integer))
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


def _touch(dialect: str) -> Any:
    build = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = build(TOUCHED)
    return stmt.on_conflict_do_update(index_elements=["key"], set_={"n": stmt.excluded.n})


def test_insert_all_stores_what_an_orm_insert_stores(empty_database: str) -> None:
    """On PostgreSQL the parts go as one statement of array parameters: same values, a child may name a
    parent of an earlier part (keys are checked at the statement's end), ON CONFLICT still applies."""

    async def run(db: Database) -> tuple[list[Any], list[Any], list[Any]]:
        touch = _touch(db.engine.dialect.name)
        async with db.transaction() as session:
            await session.execute(insert(TOUCHED), [{"key": "old", "n": 1}])
            await session.execute(insert(ROWS), rows("orm"))
        for batch in (rows("fast"), []):  # the second call: every part empty
            async with db.transaction() as session:
                children = [{"id": f"c-{r['id']}", "parent": r["id"]} for r in batch]
                touched = [{"key": "old", "n": 2}, {"key": "new", "n": 3}] if batch else []
                await insert_all(
                    session, [(insert(ROWS), batch), (insert(CHILDREN), children), (touch, touched)]
                )
        async with db.read() as session:
            found = list((await session.execute(select(ROWS).order_by(ROWS.c.n, ROWS.c.id))).all())
            kids = list((await session.execute(select(CHILDREN).order_by(CHILDREN.c.id))).all())
            marks = list((await session.execute(select(TOUCHED).order_by(TOUCHED.c.key))).all())
            return found, kids, marks

    found, kids, marks = asyncio.run(with_tables(empty_database, run))
    fast = [tuple(r)[1:] for r in found if r.id.startswith("fast")]
    orm = [tuple(r)[1:] for r in found if r.id.startswith("orm")]
    assert fast == orm
    assert [r[1] for r in fast] == DOCS
    assert [tuple(k) for k in kids] == [(f"c-fast{i}", f"fast{i}") for i in range(len(DOCS))]
    assert [tuple(m) for m in marks] == [("new", 3), ("old", 2)]


def test_insert_all_refuses_a_missing_parent(empty_database: str) -> None:
    async def run(db: Database) -> None:
        async with db.transaction() as session:
            await insert_all(
                session, [(insert(ROWS), []), (insert(CHILDREN), [{"id": "c", "parent": "none"}])]
            )

    with pytest.raises(Exception, match="(?i)foreign key"):
        asyncio.run(with_tables(empty_database, run))
