"""AGENTMX_DATABASE_POOL_SIZE bounds the PostgreSQL connections one process holds: processes that share
one database must fit together under its max_connections (100 by default), and each kept 40."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import asyncpg
import httpx
import pytest

from agentmx.testing import postgres
from agentmx.testing.server import ServerProcess
from conftest import Harness
from events_support import Receiver, new_inbox, send_mail


def _connections_to(database: str) -> int:
    async def count() -> int:
        conn = await asyncpg.connect(postgres.ADMIN_URL)
        try:
            return int(
                await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = $1", database)
            )
        finally:
            await conn.close()

    return asyncio.run(count())


def test_a_process_holds_at_most_its_pool_size_of_postgres_connections(
    fresh_server: Callable[..., ServerProcess],
) -> None:
    if not postgres.available():
        pytest.skip("PostgreSQL unavailable")
    server = fresh_server("postgres", env={"AGENTMX_DATABASE_POOL_SIZE": "3"}).start()
    key = server.create_key()
    assert server.database_url is not None
    database = server.database_url.rsplit("/", 1)[1]

    async def fan_out() -> list[int]:
        async with httpx.AsyncClient(
            base_url=server.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30
        ) as c:
            paths = ["/v0/threads/thd_unknown", "/v0/threads", "/v0/inboxes"] * 10
            return [r.status_code for r in await asyncio.gather(*(c.get(p) for p in paths))]

    statuses = asyncio.run(fan_out())
    # Every read waited its turn for one of the three and was answered.
    assert sorted(set(statuses)) == [200, 404], statuses
    # The pool keeps what it opened: three, plus the LISTEN connection (and create_key's, closed).
    assert _connections_to(database) <= 4


def test_a_pool_of_one_stores_mail_without_waiting_for_a_second_connection(
    fresh_server: Callable[..., ServerProcess],
) -> None:
    """An inbound batch reads the organization's webhooks on a second connection beside its own
    first statement, a shortcut that must not wait: with a pool of one, that wait was the pool's
    30 s timeout for every message."""
    if not postgres.available():
        pytest.skip("PostgreSQL unavailable")
    server = fresh_server("postgres", env={"AGENTMX_DATABASE_POOL_SIZE": "1"}).start()
    client = Harness(server, "postgres").client()
    receiver = Receiver()
    try:
        inbox = new_inbox(client)
        client.inboxes.webhooks.create(inbox, url=receiver.url, event_types=["message.received"])
        started = time.monotonic()
        for n in range(3):
            send_mail(server, inbox, subject=f"pool of one {n}")
        took = time.monotonic() - started
        assert took < 10, f"three messages took {took:.1f} s"
        assert len(receiver.wait(3, timeout=20)) == 3
    finally:
        receiver.close()
