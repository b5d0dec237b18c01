"""GET message and GET thread are answered ahead of FastAPI's stack (http/hot_routes.py): what the
stack used to provide at their edge stays the same: error bodies, HEAD, the routes around
them, headers, and the exact JSON bytes (http/wire.json_response)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import asyncpg
import httpx
import pytest

from agentmx.db.engine import IDLE_PING_AFTER
from agentmx.testing import postgres
from agentmx.testing.server import ServerProcess
from conftest import Harness
from mail_support import make_message, smtp_send


def _http(harness: Harness, api_key: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(base_url=harness.server.base_url, headers=headers, timeout=30)


def _delivered(harness: Harness, http: httpx.Client, **message: Any) -> tuple[str, dict[str, Any]]:
    inbox = http.post("/v0/inboxes", json={"username": harness.new_username()}).json()["inbox_id"]
    msg = make_message(inbox, **message)
    assert smtp_send(harness.server, [inbox], msg.as_bytes()) == {}
    items = http.get(f"/v0/inboxes/{inbox}/messages").json()["messages"]
    assert len(items) == 1
    return inbox, items[0]


def _paths(inbox: str, item: dict[str, Any]) -> list[str]:
    thread = item["thread_id"]
    return [
        f"/v0/inboxes/{inbox}/messages/{quote(item['message_id'], safe='@')}",
        f"/v0/threads/{thread}",
        f"/v0/inboxes/{inbox}/threads/{thread}",
    ]


def _error(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/json"
    body: dict[str, Any] = resp.json()
    assert body["code"] == code and body["docs"].endswith("#" + code) and body["name"] and body["message"]
    return body


def test_auth_errors_and_head_as_on_every_other_route(harness: Harness) -> None:
    with _http(harness, harness.api_key) as http:
        inbox, item = _delivered(harness, http)
        no_read = http.post("/v0/api-keys", json={"name": "n", "permissions": {"inbox_read": True}}).json()
    paths = _paths(inbox, item)
    with _http(harness) as anonymous, _http(harness, "am_not_a_key") as wrong:
        # The same 401 bodies as a route that goes through FastAPI's stack.
        for client in (anonymous, wrong):
            expected = client.get("/v0/inboxes").json()
            for path in paths:
                assert _error(client.get(path), 401, expected["code"]) == expected
    with _http(harness, no_read["api_key"]) as limited:
        for path in paths:
            _error(limited.get(path), 403, "missing_permission")
    with _http(harness, harness.api_key) as http:
        for path in paths:  # HEAD as GET, without the body (it was a 405 here as on every route)
            head, got = http.head(path), http.get(path)
            assert head.status_code == 200 and head.content == b""
            assert head.headers["content-type"] == got.headers["content-type"] == "application/json"
            assert head.headers["content-length"] == got.headers["content-length"]
        unknown = [
            (f"/v0/inboxes/nobody@{inbox.split('@')[1]}/messages/%3Cx%40y%3E", "Inbox not found"),
            (f"/v0/inboxes/{inbox}/messages/%3Cnone%40example.com%3E", "Message not found"),
            ("/v0/threads/thd_unknown", "Thread not found"),
            ("/v0/pods/pod_unknown/threads/thd_unknown", "Pod not found"),
        ]
        for path, message in unknown:
            assert _error(http.get(path), 404, "not_found")["message"] == message


def test_neighbouring_routes_still_reach_fastapi(harness: Harness) -> None:
    with _http(harness, harness.api_key) as http:
        inbox, item = _delivered(harness, http)
        message_path, thread_path, _ = _paths(inbox, item)
        # Search is a list route, not an id; other methods on the hot paths are FastAPI's.
        assert http.get(f"/v0/inboxes/{inbox}/messages/search", params={"q": "Hello"}).status_code == 200
        assert http.get("/v0/threads/search", params={"q": "Hello"}).status_code == 200
        updated = http.patch(message_path, json={"add_labels": ["kept"]})
        assert updated.status_code == 200 and "kept" in updated.json()["labels"]
        # The hot reads' own SQLite connections see the write at once (a new snapshot per read).
        assert "kept" in http.get(message_path).json()["labels"]
        assert "kept" in http.get(thread_path).json()["labels"]
        http.patch(message_path, json={"remove_labels": ["kept"]})
        assert "kept" not in http.get(message_path).json()["labels"]
        raw = http.get(message_path + "/raw")
        assert raw.status_code == 200 and raw.json()["download_url"]


def test_document_bytes_and_sdk_models(harness: Harness) -> None:
    subject = 'Grüße, 東京 😀 "quoted" back\\slash'
    body = "Zeile 1\tTab\nLigne 2 é – ✓ \U0001f680\n"
    with _http(harness, harness.api_key) as http:
        inbox, item = _delivered(
            harness, http, subject=subject, text=body, message_id="<with/slash+plus@example.com>"
        )
        message_path, thread_path, inbox_thread_path = _paths(inbox, item)
        assert "%2F" in message_path  # the id's '/' travels encoded and arrives decoded
        for path in (message_path, thread_path, inbox_thread_path):
            resp = http.get(path)
            assert resp.status_code == 200 and resp.headers["content-type"] == "application/json"
            assert int(resp.headers["content-length"]) == len(resp.content)
            doc = resp.json()
            compact = json.dumps(doc, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
            assert resp.content == compact.encode("utf-8")  # what json.dumps wrote before orjson
        message = http.get(message_path).json()
        assert message["subject"] == subject and message["text"].replace("\r\n", "\n") == body
        assert message["message_id"] == "<with/slash+plus@example.com>"
    client = harness.client()
    got = client.inboxes.messages.get(inbox, item["message_id"])
    assert got.subject == subject and got.message_id == item["message_id"]
    thread = client.threads.get(item["thread_id"])
    assert thread.messages[0].subject == subject


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_rate_limit_applies_to_the_hot_reads(
    backend: str, fresh_server: Callable[..., ServerProcess]
) -> None:
    server = fresh_server(backend, env={"AGENTMX_RATE_LIMIT_PER_MINUTE": "2"}).start()
    key = server.create_key()
    with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {key}"}) as http:
        statuses = [http.get("/v0/threads/thd_unknown").status_code for _ in range(2)]
        assert statuses == [404, 404]
        limited = http.get("/v0/threads/thd_unknown")
        _error(limited, 429, "rate_limit_exceeded")
        assert 1 <= int(limited.headers["Retry-After"]) <= 60


def test_postgres_connections_lost_under_the_hot_reads(fresh_server: Callable[..., ServerProcess]) -> None:
    """The hot reads use asyncpg without SQLAlchemy's execute, which used to notice a lost
    connection and replace the pool's generation: one failed read, not one per pooled connection."""
    server = fresh_server("postgres").start()
    key = server.create_key()
    assert server.database_url is not None
    database = server.database_url.rsplit("/", 1)[1]

    async def fan_out() -> None:  # many reads at once: several pooled connections in use
        async with httpx.AsyncClient(
            base_url=server.base_url, headers={"Authorization": f"Bearer {key}"}
        ) as c:
            statuses = await asyncio.gather(*(c.get("/v0/threads/thd_unknown") for _ in range(20)))
            assert {r.status_code for r in statuses} == {404}

    async def terminate() -> None:
        admin = await asyncpg.connect(postgres.ADMIN_URL)
        try:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = $1 AND pid <> pg_backend_pid()",
                database,
            )
        finally:
            await admin.close()

    asyncio.run(fan_out())
    asyncio.run(terminate())
    outcomes: list[int | str] = []
    with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {key}"}) as http:
        for _ in range(30):
            try:
                outcomes.append(http.get("/v0/threads/thd_unknown").status_code)
            except httpx.TransportError as exc:  # the server closes a connection after a 500
                outcomes.append(type(exc).__name__)
    assert outcomes.count(500) <= 1 and outcomes[-20:] == [404] * 20, outcomes


def test_postgres_connections_lost_while_idle_are_replaced_by_the_checkout_ping(
    fresh_server: Callable[..., ServerProcess],
) -> None:
    """A pooled connection idle past IDLE_PING_AFTER is pinged at checkout and replaced if dead: the
    ping and the reconnect await inside the pool's checkout (db/sync_calls), several at once here,
    and every read is answered."""
    server = fresh_server("postgres").start()
    key = server.create_key()
    assert server.database_url is not None
    database = server.database_url.rsplit("/", 1)[1]

    async def fan_out() -> list[int]:
        async with httpx.AsyncClient(
            base_url=server.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30
        ) as c:
            return [
                r.status_code for r in await asyncio.gather(*(c.get("/v0/threads/thd_x") for _ in range(20)))
            ]

    async def admin(sql: str) -> int:
        conn = await asyncpg.connect(postgres.ADMIN_URL)
        try:
            return int(await conn.fetchval(sql, database))
        finally:
            await conn.close()

    assert asyncio.run(fan_out()) == [404] * 20
    killed = asyncio.run(
        admin(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = $1 AND pid <> pg_backend_pid() AND application_name = ''"
        )
    )
    assert killed > 1
    time.sleep(IDLE_PING_AFTER + 0.5)
    assert asyncio.run(fan_out()) == [404] * 20
    assert asyncio.run(fan_out()) == [404] * 20
    # The dead connections were closed, not kept: no more than the test pool (10) and the LISTEN one.
    assert asyncio.run(admin("SELECT count(*) FROM pg_stat_activity WHERE datname = $1")) <= 11


def test_postgres_out_of_connections_is_503_on_every_read(fresh_server: Callable[..., ServerProcess]) -> None:
    """A PostgreSQL that refuses new connections (too many clients, SQLSTATE 53300) is a 503 to
    retry, on the hot reads (the driver's own connection) as on the rest: it was a 500."""
    if not postgres.available():
        pytest.skip("PostgreSQL unavailable")
    url = postgres.create_database()
    name, role = url.rsplit("/", 1)[1], "agentmx_few_" + url.rsplit("_", 1)[1]

    async def admin(*statements: str) -> None:
        conn = await asyncpg.connect(postgres.ADMIN_URL)
        try:
            for sql in statements:
                await conn.execute(sql)
        finally:
            await conn.close()

    # Connection limits bind roles that are not superusers: the server runs as one that owns its
    # database, with room for what it holds idle (4) and `keys create`, not for 30 reads at once.
    asyncio.run(
        admin(f'CREATE ROLE "{role}" LOGIN CONNECTION LIMIT 6', f'ALTER DATABASE "{name}" OWNER TO "{role}"')
    )
    try:
        server = fresh_server("postgres", database_url=url.replace("//postgres@", f"//{role}@")).start()
        key = server.create_key()

        async def fan_out() -> set[int]:
            async with httpx.AsyncClient(
                base_url=server.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30
            ) as c:
                paths = ["/v0/threads/thd_unknown", "/v0/threads", "/v0/inboxes"] * 10
                return {r.status_code for r in await asyncio.gather(*(c.get(p) for p in paths))}

        statuses = asyncio.run(fan_out())
        assert 503 in statuses and statuses <= {200, 404, 503}, statuses
        server.stop()
    finally:
        postgres.drop_database(url)
        asyncio.run(admin(f'DROP ROLE IF EXISTS "{role}"'))
