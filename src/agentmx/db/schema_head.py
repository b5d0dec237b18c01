"""Is the database's schema already at the newest migration? Answered without Alembic.

Every command migrates first; on a database already at head Alembic only reads its version table,
but importing it, loading the twelve migration scripts and running its environment took a fifth of
a restart. When this check cannot tell for sure (no database yet, no version table, an older or
unknown revision, anything unexpected) the answer is no and Alembic runs as before.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from agentmx.settings import normalize_database_url

VERSIONS = Path(__file__).parent / "migrations" / "versions"
VERSION_QUERY = "SELECT version_num FROM alembic_version"
_REVISION = re.compile(r'^revision = "(\w+)"$', re.MULTILINE)
_DOWN_REVISION = re.compile(r'^down_revision = (?:None|"(\w+)")$', re.MULTILINE)


def head_revision() -> str | None:
    """The one revision no other revises, read from the scripts' own lines; None if not plainly one."""
    revisions: set[str] = set()
    revised: set[str] = set()
    for script in VERSIONS.glob("*.py"):
        if script.name == "__init__.py":
            continue
        source = script.read_text()
        revision, down = _REVISION.findall(source), _DOWN_REVISION.findall(source)
        if len(revision) != 1 or len(down) != 1:  # a merge (a tuple) or an unusual script: Alembic's to read
            return None
        revisions.add(revision[0])
        revised.add(down[0])
    heads = revisions - revised
    return heads.pop() if len(heads) == 1 else None


def at_head(database_url: str) -> bool:
    head = head_revision()
    if head is None:
        return False
    url = normalize_database_url(database_url)  # as Alembic's environment gets it
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        stored = _sqlite_revisions(parsed.database, bool(parsed.query))
    else:
        stored = asyncio.run(_server_revisions(url))
    return stored == [head]


def _sqlite_revisions(database: str | None, has_options: bool) -> list[str] | None:
    if not database or database == ":memory:" or has_options:
        return None
    path = Path(database)  # not expanded: the driver opens it as written
    if not path.is_file():  # a new database: created by Alembic, as before
        return None
    try:
        connection = sqlite3.connect(path)
        try:
            return [row[0] for row in connection.execute(VERSION_QUERY)]
        finally:
            connection.close()
    except sqlite3.Error:  # not a database, no version table, ...: Alembic says what is wrong
        return None


async def _server_revisions(url: str) -> list[str] | None:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        # A server down, unknown or refusing us fails here as it failed in Alembic's own connect
        # (the same engine and URL): raised as it is, not tried twice.
        async with engine.connect() as connection:
            try:
                result = await connection.execute(text(VERSION_QUERY))
            except DBAPIError:  # no version table yet (a new database), no right to read it, ...
                return None
            return [str(row[0]) for row in result]
    finally:
        await engine.dispose()
