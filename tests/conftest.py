"""Fixtures: real agentmx servers on loopback, on SQLite and on PostgreSQL, driven by the official SDK."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from agentmail import AgentMail
from agentmail.environment import AgentMailEnvironment
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from agentmx.settings import normalize_database_url
from agentmx.testing import postgres
from agentmx.testing.migrated import MigratedTemplates
from agentmx.testing.server import ServerProcess

T = TypeVar("T")

IN_CI = os.environ.get("CI", "").lower() == "true"
BACKENDS = ["sqlite", "postgres"]


def _postgres_or_skip() -> None:
    if postgres.available():
        return
    if IN_CI:
        pytest.fail(f"PostgreSQL is required in CI and is unreachable at {postgres.ADMIN_URL}")
    pytest.skip("PostgreSQL not reachable (set AGENTMX_TEST_PG_URL)")


class Harness:
    """A running server plus what a test needs to talk to it."""

    def __init__(self, server: ServerProcess, backend: str) -> None:
        self.server = server
        self.backend = backend
        self.api_key = server.create_key()

    def client(self, api_key: str | None = None, **kw: Any) -> AgentMail:
        env = AgentMailEnvironment(http=self.server.base_url, websockets=self.server.ws_url)
        return AgentMail(api_key=api_key or self.api_key, environment=env, **kw)

    def new_username(self) -> str:
        return "t" + secrets.token_hex(5)

    def count_rows(self, sql: str, **params: str) -> int:
        """A count from the server's own database, for rows that no route shows any more."""

        async def count(conn: AsyncConnection) -> int:
            return int((await conn.execute(text(sql), params)).scalar_one())

        return self._on_database(count, write=False)

    def rows(self, sql: str, **params: str) -> list[Any]:
        """Rows read from the server's own database, as its columns store them."""

        async def read(conn: AsyncConnection) -> list[Any]:
            return list((await conn.execute(text(sql), params)).all())

        return self._on_database(read, write=False)

    def execute(self, sql: str, **params: object) -> None:
        """A write to the server's own database, for rows as an older build stored them."""

        async def write(conn: AsyncConnection) -> None:
            await conn.execute(text(sql), params)

        self._on_database(write, write=True)

    def _on_database(self, use: Callable[[AsyncConnection], Awaitable[T]], *, write: bool) -> T:
        url = self.server.database_url or f"sqlite:///{self.server.data_dir / 'agentmx.db'}"

        async def run() -> T:
            engine = create_async_engine(normalize_database_url(url))
            try:
                async with engine.begin() if write else engine.connect() as conn:
                    return await use(conn)
            finally:
                await engine.dispose()

        return asyncio.run(run())


# Each worker migrates one database per backend; the servers below start on copies of it. Those
# that test a start on a new database (ServerProcess on an empty one, empty_database) still migrate.
MIGRATED = MigratedTemplates()


def pytest_sessionfinish() -> None:
    MIGRATED.close()


def make_server(
    tmp: Path, backend: str, env: dict[str, str] | None = None
) -> tuple[ServerProcess, str | None]:
    """A server (not started) on a new database already at the newest migration."""
    url = None
    if backend == "postgres":
        _postgres_or_skip()
        url = MIGRATED.postgres_database()
    else:
        MIGRATED.sqlite_into(tmp)
    return ServerProcess(tmp, database_url=url, env=env), url


@pytest.fixture(scope="session", params=BACKENDS)
def harness(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    """One shared server per backend for the whole session; tests create their own inboxes."""
    server, url = make_server(tmp_path_factory.mktemp(f"srv-{request.param}"), request.param)
    server.start()
    try:
        yield Harness(server, request.param)
    finally:
        server.stop()
        if url:
            postgres.drop_database(url)


def run_agentmx(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``python -m agentmx`` with these settings alone (none of the caller's AGENTMX_ variables)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AGENTMX_")}
    return subprocess.run(
        [sys.executable, "-m", "agentmx", *args],
        env=clean | env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(params=BACKENDS)
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a new, empty database (no schema) on each backend; dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    _postgres_or_skip()
    url = postgres.create_database()
    try:
        yield url
    finally:
        postgres.drop_database(url)


@pytest.fixture
def client(harness: Harness) -> AgentMail:
    return harness.client()


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Factory for a private server (restart and multi-process tests); cleaned up afterwards."""
    made: list[tuple[ServerProcess, str | None]] = []

    def factory(
        backend: str = "sqlite", env: dict[str, str] | None = None, database_url: str | None = None
    ) -> ServerProcess:
        if database_url is None:
            server, url = make_server(tmp_path / f"s{len(made)}", backend, env)
            made.append((server, url))
        else:
            server = ServerProcess(tmp_path / f"s{len(made)}", database_url=database_url, env=env)
            made.append((server, None))
        return server

    yield factory
    for server, url in made:
        server.kill()
        if url:
            postgres.drop_database(url)


NO_RETRY: Any = {"max_retries": 0}


@pytest.fixture
def http(harness: Harness) -> Iterator[httpx.Client]:
    """Raw HTTP with the harness's key, for requests the SDK would not make."""
    headers = {"Authorization": f"Bearer {harness.api_key}"}
    with httpx.Client(base_url=harness.server.base_url, headers=headers, timeout=30) as client:
        yield client


@pytest.fixture
def inbox(http: httpx.Client, harness: Harness) -> str:
    """A new inbox's id."""
    return str(http.post("/v0/inboxes", json={"username": harness.new_username()}).json()["inbox_id"])
