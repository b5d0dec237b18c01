"""A scan's statement runs on a worker thread; its caller cancelled, the statement is interrupted and
the connection handed back only once the thread is done with it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from agentmx.db import sqlite_scans


def test_a_cancelled_scan_stops_its_statement_and_leaves_the_connection_usable(tmp_path: Path) -> None:
    """Cancelled, a scan interrupts its statement and waits for the thread to let go of the
    connection, which the caller then rolls back or closes."""
    url = f"sqlite+aiosqlite:///{tmp_path / 's.db'}"
    endless = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n"

    async def scenario() -> tuple[float, list[tuple[int]]]:
        conn = await sqlite_scans.async_creator(url)()
        cursor = await conn.cursor()
        task = asyncio.create_task(cursor.execute(endless))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        stopped = time.monotonic() - started
        rows = await (await cursor.execute("SELECT 1")).fetchall()
        await conn.close()
        return stopped, list(rows)

    stopped, rows = asyncio.run(scenario())
    assert stopped < 2.0
    assert rows == [(1,)]
