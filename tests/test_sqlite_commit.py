"""SQLite's COMMIT runs in a thread: a cancelled caller still waits for it, sees it succeed, and is
cancelled at its next await."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

from agentmx.db import sqlite_inline


def test_a_cancelled_commit_finishes_before_the_caller_goes_on(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'c.db'}"

    async def scenario() -> list[str]:
        conn = await sqlite_inline.async_creator(url)()
        raw = sqlite_inline.sqlite3_connection(conn)
        raw.execute("CREATE TABLE t (x)")
        raw.execute("BEGIN IMMEDIATE")
        raw.execute("INSERT INTO t VALUES (1)")
        order: list[str] = []
        release = threading.Event()

        real = raw.commit

        def slow_commit() -> None:
            release.wait(5)
            real()
            order.append("committed")

        conn._connection = _Proxy(raw, slow_commit)

        async def caller() -> None:
            await conn.commit()
            order.append("after-commit work")  # e.g. Database.transaction's after-commit hooks
            await asyncio.sleep(1)

        task = asyncio.create_task(caller())
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.sleep(0.05)
        assert not task.done()  # still waiting for the thread
        release.set()
        try:
            await task
        except asyncio.CancelledError:
            order.append("cancelled")
        assert raw.in_transaction is False
        await conn.close()
        return order

    assert asyncio.run(scenario()) == ["committed", "after-commit work", "cancelled"]


class _Proxy:
    """The sqlite3 connection with ``commit`` replaced (sqlite3.Connection's is read-only)."""

    def __init__(self, conn: sqlite3.Connection, commit: object) -> None:
        self._conn, self.commit = conn, commit

    def __getattr__(self, name: str) -> object:
        return getattr(self._conn, name)
