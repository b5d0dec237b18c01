"""Throwaway PostgreSQL databases for tests and benchmarks."""

from __future__ import annotations

import asyncio
import os
import secrets

import asyncpg

ADMIN_URL = os.environ.get("AGENTMX_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _with_db(url: str, name: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + name


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(ADMIN_URL, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def available() -> bool:
    try:
        asyncio.run(_admin("SELECT 1"))
        return True
    except Exception:
        return False


def url_of(name: str) -> str:
    return _with_db(ADMIN_URL, name)


def create_database(prefix: str = "agentmx_test", template: str | None = None) -> str:
    """A new database, empty or a copy of ``template`` (a database no one is connected to)."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    copy = f' TEMPLATE "{template}"' if template else ""
    asyncio.run(_admin(f'CREATE DATABASE "{name}"{copy}'))
    return url_of(name)


def drop_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
