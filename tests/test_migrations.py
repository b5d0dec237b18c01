"""The migrations build exactly the schema the models describe, on both databases."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

import agentmx.db.models  # noqa: F401 (registers every table)
from agentmx.db.base import Base
from agentmx.db.migrate import alembic_config, upgrade
from agentmx.settings import normalize_database_url


async def schema_differences(url: str) -> list[Any]:
    engine = create_async_engine(normalize_database_url(url))
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(
                lambda c: compare_metadata(MigrationContext.configure(c), Base.metadata)
            )
    finally:
        await engine.dispose()


def test_migrations_match_the_models(empty_database: str) -> None:
    upgrade(empty_database)
    assert asyncio.run(schema_differences(empty_database)) == []


def test_downgrading_past_inline_blobs_refuses_to_lose_them(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    upgrade(f"sqlite:///{path}")
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO inline_blobs (key, data) VALUES ('k', x'00')")
    with pytest.raises(RuntimeError, match="1 blobs"):
        command.downgrade(alembic_config(f"sqlite:///{path}"), "0006")
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM inline_blobs").fetchone() == (1,)


def test_small_blobs_no_row_names_are_queued_for_the_collector_on_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "u.db"
    command.upgrade(alembic_config(f"sqlite:///{path}"), "0007")
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO inline_blobs (key, data) VALUES ('left-by-a-deleted-message', x'00')")
    upgrade(f"sqlite:///{path}")
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT key FROM blob_candidates").fetchall() == [("left-by-a-deleted-message",)]


def test_blob_collection_downgrades_and_upgrades_again(empty_database: str) -> None:
    upgrade(empty_database)
    command.downgrade(alembic_config(empty_database), "0007")  # triggers, function, table, indexes, column
    upgrade(empty_database)
    assert asyncio.run(schema_differences(empty_database)) == []


def test_upgrade_drops_inbox_list_entries_their_inbox_did_not_survive(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    command.upgrade(alembic_config(f"sqlite:///{path}"), "0008")
    entry = (
        "INSERT INTO list_entries (id, organization_id, pod_id, inbox_id, scope_id, direction, list_type,"
        " entry, entry_type, read_only, created_at) VALUES (?, 'org', 'pod', ?, ?, 'receive', 'block',"
        " ?, 'email', 0, ?)"
    )
    with sqlite3.connect(path) as db:
        db.execute(
            "INSERT INTO inboxes (id, organization_id, pod_id, username, domain, status, metadata, created_at,"
            " updated_at) VALUES ('a@d', 'org', 'pod', 'a', 'd', 'active', '{}', ?, ?)",
            ("2026-11-02 00:00:00.000000",) * 2,
        )
        db.execute(entry, ("le_mine", "a@d", "a@d", "x@example.com", "2026-11-03 00:00:00.000000"))
        # Made before a@d was: an earlier a@d's.
        db.execute(entry, ("le_earlier_a", "a@d", "a@d", "z@example.com", "2026-11-01 00:00:00.000000"))
        db.execute(
            entry, ("le_gone", "b@d", "b@d", "x@example.com", "2026-11-01 00:00:00.000000")
        )  # no b@d now
        db.execute(
            "INSERT INTO list_entries (id, organization_id, pod_id, inbox_id, scope_id, direction, list_type,"
            " entry, entry_type, read_only, created_at) VALUES ('le_org', 'org', NULL, NULL, 'org', 'send',"
            " 'block', 'y@example.com', 'email', 1, '2026-11-01 00:00:00.000000')"
        )
    upgrade(f"sqlite:///{path}")
    with sqlite3.connect(path) as db:
        assert sorted(r[0] for r in db.execute("SELECT id FROM list_entries")) == ["le_mine", "le_org"]
