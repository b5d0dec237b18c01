"""What an operator meets starting and running `agentmx serve`: one-line errors, and a database that
goes away and comes back."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from agentmail import AgentMail
from agentmail.environment import AgentMailEnvironment

from agentmx.testing import postgres
from agentmx.testing.server import ServerProcess, free_port
from conftest import _postgres_or_skip, run_agentmx


def _serve(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Run `agentmx serve`, which must stop at start with one line; return it."""
    out = run_agentmx(
        # A free HTTP port unless args name one (the last wins): 8080 may be another server's.
        "serve", "--data-dir", str(tmp_path / "d"), "--smtp-port", "0", "--http-port", str(free_port()), *args,
        env={"AGENTMX_SMTP_WORKERS": "0", **(env or {})},
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    return out.stderr.strip()


def test_a_port_in_use_stops_serve_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = _serve(tmp_path, "--http-port", str(port))
        assert line == f"agentmx: cannot listen for HTTP on 127.0.0.1:{port}: address already in use"
        line = _serve(tmp_path, "--http-port", str(free_port()), "--smtp-port", str(port))
        assert line == f"agentmx: cannot listen for SMTP on 127.0.0.1:{port}: address already in use"


def test_a_host_name_that_does_not_resolve_stops_serve_with_the_resolvers_reason(tmp_path: Path) -> None:
    port = free_port()
    line = _serve(tmp_path, "--http-port", str(port), env={"AGENTMX_HOST": "no-such-host.invalid"})
    # The resolver's words (its errors have negative numbers, which os.strerror calls "unknown error").
    assert line.startswith(f"agentmx: cannot listen for HTTP on no-such-host.invalid:{port}: ")
    assert "unknown error" not in line, line


@pytest.mark.parametrize(
    "url", ["mysql://u@db.example/mail", "postgresql://u@127.0.0.1:notaport/x", "nonsense"]
)
def test_a_database_url_agentmx_cannot_use_is_an_invalid_setting(tmp_path: Path, url: str) -> None:
    line = _serve(tmp_path, "--database-url", url)
    assert line.startswith(
        "agentmx: invalid setting AGENTMX_DATABASE_URL: must be sqlite:///PATH or postgresql://"
    )


def test_a_database_server_that_is_not_there_stops_serve_with_one_line(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    line = _serve(tmp_path, "--database-url", f"postgresql://postgres@127.0.0.1:{port}/agentmx")
    assert line.startswith("agentmx: cannot open the database: ") and str(port) in line


def test_a_blob_folder_that_cannot_be_made_stops_serve_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "not-a-folder").write_text("")
    line = _serve(tmp_path, env={"AGENTMX_BLOB_DIR": str(tmp_path / "not-a-folder")})
    assert line.startswith("agentmx: cannot use the blob folder: ")


def test_a_database_a_newer_agentmx_migrated_stops_serve_with_one_line(tmp_path: Path) -> None:
    assert run_agentmx("db", "upgrade", "--data-dir", str(tmp_path / "d"), env={}).returncode == 0
    with sqlite3.connect(tmp_path / "d" / "agentmx.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0999'")
    line = _serve(tmp_path, "--http-port", str(free_port()))
    assert "newer than this agentmx" in line and "0999" in line


def test_a_second_serve_on_one_sqlite_database_stops_with_one_line(tmp_path: Path) -> None:
    first = ServerProcess(tmp_path / "d", smtp_port=0).start()
    try:
        line = _serve(tmp_path, "--http-port", str(free_port()))
        assert line.startswith(f"agentmx: another agentmx serve (pid {first.proc.pid}) uses ")  # type: ignore[union-attr]
        assert first.create_key()  # and the first one serves on, its database untouched
        assert httpx.get(f"{first.base_url}/health").status_code == 200
        first.kill()  # however it ends, the lock ends with it
        first.start()
    finally:
        first.stop()


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


class _Proxy:
    """A TCP relay to PostgreSQL that can refuse connections and drop the open ones (a server down)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.server: asyncio.Server | None = None
        self.open: set[asyncio.StreamWriter] = set()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self._call(self._start())

    def _call(self, coro: object) -> None:
        asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)  # type: ignore[arg-type]

    async def _start(self) -> None:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port, reuse_address=True)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.open |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def _down(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.open:
            writer.transport.abort()
        self.open.clear()

    def down(self) -> None:
        self._call(self._down())

    def up(self) -> None:
        self._call(self._start())


def test_postgresql_down_while_serving_is_503_and_back_without_a_restart(tmp_path: Path) -> None:
    _postgres_or_skip()
    url = postgres.create_database()
    target = urlsplit(url)
    proxy = _Proxy((target.hostname or "127.0.0.1", target.port or 5432))
    via_proxy = f"postgresql://{target.username}@127.0.0.1:{proxy.port}{target.path}"
    server = ServerProcess(tmp_path, database_url=via_proxy, smtp_port=0).start()
    try:
        headers = {"Authorization": f"Bearer {server.create_key()}"}
        assert httpx.get(server.base_url + "/v0/inboxes", headers=headers).status_code == 200
        proxy.down()
        down = httpx.get(server.base_url + "/v0/inboxes", headers=headers)
        # It was a 500 (asyncpg's refused connection went through unwrapped).
        assert down.status_code == 503 and down.headers["retry-after"] == "1"
        assert down.json()["name"] == "ServiceUnavailableError"
        proxy.up()
        assert httpx.get(server.base_url + "/v0/inboxes", headers=headers).status_code == 200
    finally:
        server.stop()
        proxy.loop.call_soon_threadsafe(proxy.loop.stop)
        postgres.drop_database(url)


@pytest.mark.parametrize("workers", ["0", "1"])
def test_sighup_stops_the_server_as_sigterm_does(tmp_path: Path, workers: str) -> None:
    """A closed terminal's SIGHUP (to the whole process group) is a graceful stop: it killed the
    server at once, its job claims kept for AGENTMX_JOB_LEASE."""
    server = ServerProcess(tmp_path, env={"AGENTMX_SMTP_WORKERS": workers}).start()
    assert server.proc is not None
    for pid in [server.proc.pid, *_children(server.proc.pid)]:  # as a terminal signals its group
        os.kill(pid, signal.SIGHUP)
    assert server.proc.wait(timeout=20) == 0


def test_sighup_leaves_a_server_started_under_nohup_running(tmp_path: Path) -> None:
    """nohup (SIGHUP ignored) asks the server to outlive its terminal: a hang-up stopped it."""
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # inherited by the server, as nohup does
    try:
        server = ServerProcess(tmp_path, env={"AGENTMX_SMTP_WORKERS": "1"}).start()
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert server.proc is not None
    try:
        for pid in [server.proc.pid, *_children(server.proc.pid)]:
            os.kill(pid, signal.SIGHUP)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.proc.wait(timeout=2)
        assert server.proc.poll() is None
        assert httpx.get(server.base_url + "/health").status_code == 200
    finally:
        server.stop()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_secret_key_the_dkim_keys_were_not_encrypted_with_stops_serve_with_one_line(
    tmp_path: Path, fresh_server: Any, backend: str
) -> None:
    """It started, took sends with 200 and failed every delivery from a custom domain (InvalidToken)."""
    server = fresh_server(backend, env={"AGENTMX_SECRET_KEY": "the-first-secret"}).start()
    key = server.create_key()
    env = AgentMailEnvironment(http=server.base_url, websockets=server.ws_url)
    AgentMail(api_key=key, environment=env).domains.create(domain=f"d{free_port()}.example.test")
    server.stop()
    storage = ["--database-url", server.database_url] if server.database_url else []
    # Another secret, and none (the one made and kept in the database).
    for changed in ({"AGENTMX_SECRET_KEY": "another-secret"}, {}):
        line = _serve(tmp_path, "--data-dir", str(server.data_dir), *storage, env=changed)
        assert line.startswith("agentmx: AGENTMX_SECRET_KEY is not the secret this database's DKIM keys")
    server.start()  # the secret it was set up with
    headers = {"Authorization": f"Bearer {key}"}
    assert httpx.get(server.base_url + "/v0/domains", headers=headers).status_code == 200
