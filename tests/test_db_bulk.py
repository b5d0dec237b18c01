"""db.bulk.insert_many and insert_all store what session.execute(insert(...)) stores, on SQLite and PostgreSQL;
insert_returning (SQLite) stores and returns what an INSERT ... RETURNING through the session does."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TypeVar

import pytest
from sqlalchemy import (
    Column,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    bindparam,
    insert,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from agentmx.db.bulk import ValuesInsert, insert_all, insert_many, insert_returning
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
SEQUENCED = Table(
    "bulk_sequenced",
    METADATA,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("name", String(32), unique=True),
    Column("at", UTCDateTime),
    Column("doc", JSONType),
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


# As services/events.py names its columns: every one but the sequence, which RETURNING reports.
_SEQUENCED_NAMED = (
    insert(SEQUENCED)
    .values({c: bindparam(c, type_=SEQUENCED.c[c].type) for c in ("name", "at", "doc")})
    .returning(SEQUENCED.c.name, SEQUENCED.c.seq)
)


def _sequenced_rows(prefix: str, count: int) -> list[dict[str, Any]]:
    base = rows(prefix)
    return [{"name": f"{prefix}{i}", "at": base[i % 4]["at"], "doc": DOCS[i % 4]} for i in range(count)]


def test_insert_returning_stores_and_returns_what_the_session_does(tmp_path: Any) -> None:
    """250 rows: three statements of at most 100 rows (SQLite's oldest limit is 999 parameters)."""

    async def run(db: Database) -> tuple[list[Any], list[Any], list[Any]]:
        async with db.transaction() as session:
            fast = await session.run_sync(
                lambda s: insert_returning(s.connection(), _SEQUENCED_NAMED, _sequenced_rows("fast", 250))
            )
            plain = insert(SEQUENCED).returning(SEQUENCED.c.name, SEQUENCED.c.seq)
            orm = (await session.execute(plain, _sequenced_rows("orm", 250))).all()
            assert (
                await session.run_sync(lambda s: insert_returning(s.connection(), _SEQUENCED_NAMED, [])) == []
            )
        async with db.read() as session:
            stored = list((await session.execute(select(SEQUENCED).order_by(SEQUENCED.c.seq))).all())
        return [tuple(r) for r in fast], [tuple(r) for r in orm], stored

    fast, orm, stored = asyncio.run(with_tables(f"sqlite:///{tmp_path / 'seq.db'}", run))
    by_name = {r.name: r for r in stored}
    assert len(fast) == 250 and sorted(fast) == sorted((r.name, r.seq) for r in stored[:250])
    assert {name for name, _ in orm} == {r.name for r in stored[250:]}
    for i in range(250):
        mine, theirs = by_name[f"fast{i}"], by_name[f"orm{i}"]
        assert (mine.at, mine.doc) == (theirs.at, theirs.doc)


def test_insert_returning_refuses_rows_leaving_out_a_named_column(tmp_path: Any) -> None:
    async def run(db: Database) -> None:
        async with db.transaction() as session:
            await session.run_sync(
                lambda s: insert_returning(s.connection(), _SEQUENCED_NAMED, [{"name": "x"}])
            )

    with pytest.raises(ValueError, match="'at'"):
        asyncio.run(with_tables(f"sqlite:///{tmp_path / 'seq.db'}", run))


def test_values_insert_is_for_qmark_dialects_only() -> None:
    with pytest.raises(ValueError, match="qmark"):
        ValuesInsert(_SEQUENCED_NAMED, postgresql.asyncpg.dialect())


def test_a_refused_row_raises_what_the_session_raises(empty_database: str) -> None:
    """On SQLite the rows go to the sqlite3 connection itself: its errors come out wrapped as
    SQLAlchemy wraps them (an IntegrityError, which callers and db.retryable look for), and the
    transaction stores none of its rows; insert_all's likewise, on both databases."""

    async def run(db: Database) -> list[Any]:
        async with db.transaction() as session:
            await insert_many(session, insert(ROWS), rows("dup"))
        with pytest.raises(IntegrityError):
            async with db.transaction() as session:
                await insert_many(session, insert(ROWS), rows("new"))
                await insert_many(session, insert(ROWS), rows("dup")[:1])
        with pytest.raises(IntegrityError):
            async with db.transaction() as session:
                await insert_all(session, [(insert(ROWS), rows("all")), (insert(CHILDREN), [])])
                await insert_all(session, [(insert(ROWS), rows("dup")[:1]), (insert(CHILDREN), [])])
        if db.is_sqlite:
            with pytest.raises(IntegrityError):
                async with db.transaction() as session:
                    named = _sequenced_rows("seq", 2)
                    await session.run_sync(
                        lambda s: insert_returning(s.connection(), _SEQUENCED_NAMED, named)
                    )
                    await session.run_sync(
                        lambda s: insert_returning(s.connection(), _SEQUENCED_NAMED, named)
                    )
        async with db.read() as session:
            kept = list((await session.execute(select(ROWS.c.id).order_by(ROWS.c.id))).scalars())
            return kept + list((await session.execute(select(SEQUENCED.c.name))).scalars())

    assert asyncio.run(with_tables(empty_database, run)) == sorted(r["id"] for r in rows("dup"))
