"""A database failure that rolled the transaction back and is worth retrying is a 503, not a 500.

PostgreSQL only: a deadlock victim and a connection the server closed (restart, failover, an
administrator) are what it reports; SQLite's busy answer is covered by the same table.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import asyncpg
from agentmail import AgentMail
from agentmail.core.api_error import ApiError
from agentmail.environment import AgentMailEnvironment
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from agentmx.db.retryable import retryable
from agentmx.settings import normalize_database_url
from agentmx.testing import postgres
from agentmx.testing.server import ServerProcess
from conftest import NO_RETRY, _postgres_or_skip


def _plain(url: str) -> str:
    return "postgresql://" + url.split("://", 1)[1]


def test_a_deadlock_victim_is_retryable() -> None:
    _postgres_or_skip()
    url = postgres.create_database("agentmx_deadlock")

    async def run() -> BaseException:
        engine = create_async_engine(normalize_database_url(url))
        try:
            async with engine.begin() as conn:
                await conn.execute(text("CREATE TABLE t (id int PRIMARY KEY)"))
                await conn.execute(text("INSERT INTO t VALUES (1), (2)"))
            a, b = await engine.connect(), await engine.connect()
            await a.begin()
            await b.begin()
            await a.execute(text("SELECT 1 FROM t WHERE id = 1 FOR UPDATE"))
            await b.execute(text("SELECT 1 FROM t WHERE id = 2 FOR UPDATE"))
            results = await asyncio.gather(
                a.execute(text("SELECT 1 FROM t WHERE id = 2 FOR UPDATE")),
                b.execute(text("SELECT 1 FROM t WHERE id = 1 FOR UPDATE")),
                return_exceptions=True,
            )
            await a.close()
            await b.close()
            failures = [r for r in results if isinstance(r, BaseException)]
            assert len(failures) == 1, results
            return failures[0]
        finally:
            await engine.dispose()

    try:
        failure = asyncio.run(run())
    finally:
        postgres.drop_database(url)
    assert isinstance(failure, DBAPIError) and getattr(failure.orig, "sqlstate", None) == "40P01"
    assert retryable(failure)


def test_a_request_whose_connection_is_killed_gets_503_and_the_next_one_works(
    fresh_server: Callable[..., ServerProcess],
) -> None:
    server = fresh_server("postgres")
    server.start()
    env = AgentMailEnvironment(http=server.base_url, websockets=server.ws_url)
    client = AgentMail(api_key=server.create_key(), environment=env)
    inbox = client.inboxes.create()
    assert server.database_url
    outcome: dict[str, Any] = {}

    def update() -> None:
        try:
            outcome["ok"] = client.inboxes.update(inbox.inbox_id, metadata={"a": 1}, request_options=NO_RETRY)
        except ApiError as exc:
            outcome["error"] = exc

    async def kill_the_waiting_request() -> None:
        holder = await asyncpg.connect(_plain(server.database_url or ""))
        try:
            blocked = holder.transaction()
            await blocked.start()
            # The update locks the inbox's row; this holds every row of the table.
            await holder.execute("LOCK TABLE inboxes IN EXCLUSIVE MODE")
            request = threading.Thread(target=update)
            request.start()
            deadline = time.monotonic() + 10
            killed = 0
            while not killed and time.monotonic() < deadline:
                killed = await holder.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    " AND wait_event_type = 'Lock'"
                )
                await asyncio.sleep(0.02)
            assert killed, "the update never waited for the lock"
            await asyncio.to_thread(request.join, 10)
            await blocked.rollback()
        finally:
            await holder.close()

    asyncio.run(kill_the_waiting_request())
    error = outcome.get("error")
    assert isinstance(error, ApiError), outcome
    assert error.status_code == 503
    assert error.body["name"] == "ServiceUnavailableError" and error.body["code"] == "service_unavailable"
    assert (error.headers or {}).get("retry-after") == "1"
    # Nothing was changed, and the server goes on with fresh connections.
    assert client.inboxes.get(inbox.inbox_id).metadata in ({}, None)
    assert client.inboxes.update(inbox.inbox_id, metadata={"a": 1}).metadata == {"a": 1}
