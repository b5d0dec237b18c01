"""The migrations build exactly the schema the models describe, on both databases."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import create_async_engine

import agentmx.db.models  # noqa: F401 (registers every table)
from agentmx.db.base import Base
from agentmx.db.migrate import alembic_config, upgrade
from agentmx.db.types import UTCDateTime
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


async def _run_sql(url: str, statements: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    engine = create_async_engine(normalize_database_url(url))
    rows: list[Any] = []
    try:
        async with engine.begin() as conn:
            for sql, params in statements:
                statement = text(sql)
                if ":at" in sql:  # stored as the application stores times (naive UTC on SQLite)
                    statement = statement.bindparams(bindparam("at", type_=UTCDateTime()))
                result = await conn.execute(statement, params)
                rows = list(result.all()) if result.returns_rows else rows
    finally:
        await engine.dispose()
    return rows


def test_upgrade_drops_inbox_list_entries_their_inbox_did_not_survive(empty_database: str) -> None:
    command.upgrade(alembic_config(empty_database), "0008")
    day = [datetime(2026, 11, d, tzinfo=UTC) for d in range(1, 4)]
    entry = (
        "INSERT INTO list_entries (id, organization_id, pod_id, inbox_id, scope_id, direction, list_type,"
        " entry, entry_type, read_only, created_at) VALUES (:id, 'org', :pod, :inbox, :scope, 'receive',"
        " 'block', :entry, 'email', false, :at)"
    )
    rows = [
        ("INSERT INTO organizations (id, created_at, updated_at) VALUES ('org', :at, :at)", {"at": day[0]}),
        (
            "INSERT INTO pods (id, organization_id, name, is_default, created_at, updated_at)"
            " VALUES ('pod', 'org', 'p', true, :at, :at)",
            {"at": day[0]},
        ),
        (
            "INSERT INTO inboxes (id, organization_id, pod_id, username, domain, status, metadata, created_at,"
            " updated_at) VALUES ('a@d', 'org', 'pod', 'a', 'd', 'active', '{}', :at, :at)",
            {"at": day[1]},
        ),
        (
            entry,
            {"id": "le_mine", "pod": "pod", "inbox": "a@d", "scope": "a@d", "entry": "x@e.com", "at": day[2]},
        ),
        # Made before a@d was: an earlier a@d's.
        (
            entry,
            {
                "id": "le_earlier",
                "pod": "pod",
                "inbox": "a@d",
                "scope": "a@d",
                "entry": "z@e.com",
                "at": day[0],
            },
        ),
        (
            entry,
            {"id": "le_gone", "pod": "pod", "inbox": "b@d", "scope": "b@d", "entry": "x@e.com", "at": day[0]},
        ),
        (
            entry,
            {"id": "le_pod", "pod": "pod", "inbox": None, "scope": "pod", "entry": "x@e.com", "at": day[0]},
        ),
    ]
    asyncio.run(_run_sql(empty_database, rows))
    upgrade(empty_database)
    left = asyncio.run(_run_sql(empty_database, [("SELECT id FROM list_entries ORDER BY id", {})]))
    assert [r[0] for r in left] == ["le_mine", "le_pod"]


def test_upgrade_keeps_the_oldest_of_several_default_pods_as_the_default(empty_database: str) -> None:
    """Two default pods made at once (before the unique index) do not stop the upgrade: the older
    stays the default, the other an ordinary pod with its inboxes."""
    command.upgrade(alembic_config(empty_database), "0009")
    day = [datetime(2026, 11, d, tzinfo=UTC) for d in range(1, 4)]
    pod = (
        "INSERT INTO pods (id, organization_id, name, is_default, created_at, updated_at)"
        " VALUES (:id, :org, 'Default Pod', :default, :at, :at)"
    )
    org = "INSERT INTO organizations (id, created_at, updated_at) VALUES (:id, :at, :at)"
    rows: list[tuple[str, dict[str, Any]]] = [
        (org, {"id": "org", "at": day[0]}),
        (org, {"id": "other", "at": day[0]}),
        (pod, {"id": "p-later", "org": "org", "default": True, "at": day[2]}),
        (pod, {"id": "p-first", "org": "org", "default": True, "at": day[1]}),
        (pod, {"id": "p-same-time", "org": "org", "default": True, "at": day[1]}),
        (pod, {"id": "p-plain", "org": "org", "default": False, "at": day[0]}),
        (pod, {"id": "p-other", "org": "other", "default": True, "at": day[2]}),
    ]
    asyncio.run(_run_sql(empty_database, rows))
    upgrade(empty_database)
    left = asyncio.run(_run_sql(empty_database, [("SELECT id FROM pods WHERE is_default ORDER BY id", {})]))
    assert [r[0] for r in left] == ["p-first", "p-other"]
    assert asyncio.run(_run_sql(empty_database, [("SELECT count(*) FROM pods", {})])) == [(5,)]


def test_upgrade_drops_what_deleted_pods_left(empty_database: str) -> None:
    """Pods deleted before their keys, entries and webhook listings went with them: the keys stop
    working, the entries go, webhooks stop listing them (one left following nothing is disabled)."""
    command.upgrade(alembic_config(empty_database), "0010")
    at = datetime(2026, 11, 1, tzinfo=UTC)
    key = (
        "INSERT INTO api_keys (id, organization_id, pod_id, inbox_id, name, prefix, secret_hash,"
        " created_at, updated_at) VALUES (:id, 'org', :pod, NULL, 'k', 'am_', :id, :at, :at)"
    )
    entry = (
        "INSERT INTO list_entries (id, organization_id, pod_id, inbox_id, scope_id, direction, list_type,"
        " entry, entry_type, read_only, created_at) VALUES (:id, 'org', :pod, NULL, :pod, 'receive',"
        " 'block', 'spam.test', 'domain', false, :at)"
    )
    hook = (
        "INSERT INTO webhooks (id, organization_id, owner_scope, url, pod_ids, inbox_ids, headers, secret,"
        " enabled, created_at, updated_at) VALUES (:id, 'org', 'org', 'http://h.test', :pods, :inboxes,"
        " '{}', 's', true, :at, :at)"
    )
    rows: list[tuple[str, dict[str, Any]]] = [
        ("INSERT INTO organizations (id, created_at, updated_at) VALUES ('org', :at, :at)", {"at": at}),
        (
            "INSERT INTO pods (id, organization_id, name, is_default, created_at, updated_at)"
            " VALUES ('live', 'org', 'p', false, :at, :at)",
            {"at": at},
        ),
        (key, {"id": "k-live", "pod": "live", "at": at}),
        (key, {"id": "k-gone", "pod": "gone", "at": at}),
        (key, {"id": "k-org", "pod": None, "at": at}),
        (entry, {"id": "le-live", "pod": "live", "at": at}),
        (entry, {"id": "le-gone", "pod": "gone", "at": at}),
        (hook, {"id": "ep-both", "pods": '["gone", "live"]', "inboxes": "[]", "at": at}),
        (hook, {"id": "ep-gone", "pods": '["gone"]', "inboxes": "[]", "at": at}),
        (hook, {"id": "ep-inbox", "pods": '["gone"]', "inboxes": '["a@d"]', "at": at}),
        (hook, {"id": "ep-all", "pods": "[]", "inboxes": "[]", "at": at}),
    ]
    asyncio.run(_run_sql(empty_database, rows))
    upgrade(empty_database)

    def ids(sql: str) -> list[Any]:
        return [tuple(r) for r in asyncio.run(_run_sql(empty_database, [(sql, {})]))]

    assert ids("SELECT id FROM api_keys ORDER BY id") == [("k-live",), ("k-org",)]
    assert ids("SELECT id FROM list_entries ORDER BY id") == [("le-live",)]
    hooks = ids("SELECT id, pod_ids, inbox_ids, enabled FROM webhooks ORDER BY id")
    assert [(h[0], _json(h[1]), _json(h[2]), bool(h[3])) for h in hooks] == [
        ("ep-all", [], [], True),
        ("ep-both", ["live"], [], True),
        ("ep-gone", [], [], False),
        ("ep-inbox", [], ["a@d"], True),
    ]


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value
