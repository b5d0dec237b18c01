"""PostgreSQL plans of the list pages once their prepared statements go generic.

asyncpg prepares each statement; after five runs on a connection PostgreSQL may keep a generic plan,
made without the bound values. Here every run is generic (plan_cache_mode on the database), and the
work a page does is read from the index statistics: a page of an inbox's threads walks the inbox's
newest threads, it does not look at every thread of the inbox for hidden labels and sort them all.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Table, insert, text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from agentmx.db.models import Message, MessageLabel, Thread
from agentmx.settings import normalize_database_url
from agentmx.testing import postgres
from agentmx.testing.server import ServerProcess
from conftest import _postgres_or_skip

INBOXES, THREADS = 20, 300  # threads an inbox; a page is 50
INDEX = "ix_threads_inbox_ts"  # the inbox's threads newest first: a page reads 51 of its entries


def _row(table: Table, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` plus a neutral value for every other NOT NULL column without a default."""
    neutral = {int: 0, bool: False, list: [], dict: {}}
    for col in table.columns:
        if col.name in values or col.nullable or col.default is not None or col.server_default is not None:
            continue
        values[col.name] = neutral.get(col.type.python_type, values["created_at"])
    return values


async def _seed(conn: AsyncConnection, inboxes: list[str]) -> None:
    """THREADS threads of one message each in each inbox, labelled as received mail is, none hidden."""
    found = await conn.execute(
        text("SELECT organization_id, pod_id FROM inboxes WHERE id = :id"), {"id": inboxes[0]}
    )
    org, pod = found.one()
    base = datetime(2026, 1, 1, tzinfo=UTC)
    threads, messages, labels = [], [], []
    for i, n in ((i, n) for n in range(THREADS) for i in range(len(inboxes))):
        inbox, ts = inboxes[i], base + timedelta(minutes=n, seconds=i)
        thread, pk = f"thd_plan{i:02d}_{n:05d}", f"msg_plan{i:02d}_{n:05d}"
        common = {"organization_id": org, "pod_id": pod, "inbox_id": inbox, "subject": f"s{n}"}
        threads.append(
            _row(
                Thread.__table__,
                {**common, "id": thread, "senders": [], "recipients": [inbox], "message_count": 1,
                 "size": 1, "timestamp": ts, "received_timestamp": ts, "created_at": ts, "updated_at": ts},
            )
        )  # fmt: skip
        messages.append(
            _row(
                Message.__table__,
                {**common, "id": pk, "message_id": f"<{pk}@plan.example>", "thread_id": thread,
                 "direction": "inbound", "timestamp": ts, "from_addr": "a@plan.example", "to": [inbox],
                 "cc": [], "bcc": [], "reply_to": [], "references": [], "headers": {}, "size": 1,
                 "created_at": ts, "updated_at": ts},
            )
        )  # fmt: skip
        labels += [{"message_pk": pk, "label": "received"}, {"message_pk": pk, "label": "unread"}]
    await conn.execute(insert(Thread.__table__), threads)
    await conn.execute(insert(Message.__table__), messages)
    await conn.execute(insert(MessageLabel.__table__), labels)


def _sql(url: str, work: Callable[[AsyncConnection], Any]) -> Any:
    async def run() -> Any:
        engine = create_async_engine(normalize_database_url(url))
        try:
            async with engine.begin() as conn:
                return await work(conn)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _index_reads(url: str) -> int:
    found = _sql(
        url,
        lambda conn: conn.execute(
            text("SELECT idx_tup_read FROM pg_stat_user_indexes WHERE indexrelname = :name"), {"name": INDEX}
        ),
    )
    return int(found.scalar_one())


def _reported_index_reads(url: str, before: int) -> int:
    """The entries read from the index once the server's backend has reported the page's (an idle backend reports
    within about ten seconds of its last statement)."""
    deadline = time.monotonic() + 30
    while (now := _index_reads(url)) == before and time.monotonic() < deadline:
        time.sleep(0.5)
    return now


@pytest.fixture
def generic_server(tmp_path: Any) -> Any:
    _postgres_or_skip()
    url = postgres.create_database()
    name = url.rsplit("/", 1)[1]
    server = ServerProcess(tmp_path / "srv", database_url=url)
    try:
        server.start()  # migrated under the default plans
        _sql(
            url,
            lambda c: c.execute(text(f'ALTER DATABASE "{name}" SET plan_cache_mode = force_generic_plan')),
        )
        server.restart()  # its connections made from now on plan generically
        yield server, url
    finally:
        server.kill()
        postgres.drop_database(url)


def test_an_inbox_threads_page_walks_its_newest_threads_under_a_generic_plan(generic_server: Any) -> None:
    server, url = generic_server
    headers = {"Authorization": f"Bearer {server.create_key()}"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as http:
        inboxes = [
            http.post("/v0/inboxes", json={"username": f"plans{i}"}).json()["inbox_id"]
            for i in range(INBOXES)
        ]
        inbox = inboxes[0]
        _sql(url, lambda conn: _seed(conn, inboxes))
        _sql(url, lambda conn: conn.execute(text("ANALYZE")))

        before = _index_reads(url)  # the seeding connections have reported theirs on closing
        page = http.get(f"/v0/inboxes/{inbox}/threads", params={"limit": 50})
        assert page.status_code == 200, page.text
        threads = page.json()["threads"]
        assert [t["thread_id"] for t in threads[:2]] == ["thd_plan00_00299", "thd_plan00_00298"]
        assert len(threads) == 50 and page.json()["next_page_token"]
        reads = _reported_index_reads(url, before) - before

    # A page of 50 and one more row; a plan that took every thread of the inbox to sort them would
    # read all 300.
    assert 0 < reads <= 2 * 51, f"{reads} entries of {INDEX} read for a page of 50 threads"
