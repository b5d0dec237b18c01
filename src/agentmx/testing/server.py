"""Run a real `agentmx serve` process on loopback, for tests and benchmarks."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# Seconds between looks for a starting server's ready line: every test starts servers, and each
# start waited half this on average (it was 0.05).
READY_POLL = 0.01


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _PortTaken(Exception):
    pass


class ServerProcess:
    """One agentmx process. ``start()`` waits until /health answers; ``kill()`` is SIGKILL."""

    def __init__(
        self,
        data_dir: Path,
        database_url: str | None = None,
        env: dict[str, str] | None = None,
        http_port: int | None = None,
        smtp_port: int | None = None,
        launcher: list[str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        # Words before the Python command (a test runs the server inside a namespace of its own).
        self.launcher = launcher or []
        self.database_url = database_url
        self.http_port = http_port or free_port()
        self.smtp_port = smtp_port if smtp_port is not None else free_port()
        # Ports picked here may be taken by someone else before the server binds them (free_port
        # only finds one free now): such a first start is retried on new ports.
        self._may_move = http_port is None and smtp_port is None
        self.extra_env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir / f"server-{self.http_port}.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.http_port}"

    def _storage_args(self) -> list[str]:
        args = ["--data-dir", str(self.data_dir)]
        if self.database_url:
            args += ["--database-url", self.database_url]
        return args

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTMX_")}
        env.update(
            {
                "AGENTMX_JOB_POLL_INTERVAL": "0.1",
                "AGENTMX_WEBHOOK_ALLOW_PRIVATE": "true",
                "AGENTMX_LOG_LEVEL": "warning",
                # SMTP in the server process unless a test asks for front ends (the default, auto,
                # starts one with 2 or more CPUs): a front end's start would add to every server's.
                "AGENTMX_SMTP_WORKERS": "0",
                # Test runs start many PostgreSQL servers at once (four workers, some with two
                # processes each); at the default 40 a few busy ones used up PostgreSQL's 100.
                "AGENTMX_DATABASE_POOL_SIZE": "10",
            }
        )
        env.update(self.extra_env)
        return env

    def cli(self, *args: str) -> str:
        """Run an ``agentmx`` subcommand against this server's storage; returns stdout."""
        out = subprocess.run(
            [sys.executable, "-m", "agentmx", *args, *self._storage_args()],
            env=self.env(),
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        return out.stdout

    def create_key(self, *extra: str) -> str:
        """A new key, as ``agentmx keys create [extra]`` would print it (``--pod P``, ``--inbox I``).

        The CLI's own parsing and key code, run in this process: a new interpreter per key cost over a
        second of CPU, and the suite makes one for almost every server it starts. ``cli()`` still runs the
        real command (tests/test_cli.py covers it); the schema is the running server's, already migrated.
        """
        from agentmx import cli  # noqa: PLC0415 (the database stack, only for those who make keys)

        name = f"test-{secrets.token_hex(3)}"
        args = cli.build_parser().parse_args(
            ["keys", "create", "--name", name, *extra, *self._storage_args()]
        )
        # Named outright: an AGENTMX_DATABASE_URL in this process's environment is not the server's.
        url = self.database_url or f"sqlite:///{self.data_dir / 'agentmx.db'}"
        settings = cli.settings_from(args).model_copy(update={"database_url": url})
        # A thread of its own: the caller may be inside a running event loop.
        with ThreadPoolExecutor(max_workers=1) as pool:
            run = pool.submit(asyncio.run, cli._create_key(settings, args.name, args.pod, args.inbox))
            return run.result()

    def start(self, timeout: float = 60.0) -> ServerProcess:
        for _ in range(3 if self._may_move else 1):
            try:
                self._start(timeout)
                self._may_move = False  # clients now know these ports: restarts keep them
                return self
            except _PortTaken:
                self.http_port = free_port()
                self.smtp_port = free_port() if self.smtp_port else 0
                self.log_path = self.data_dir / f"server-{self.http_port}.log"
        raise RuntimeError(f"agentmx could not bind its ports:\n{self.log()}")

    def _start(self, timeout: float) -> ServerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            *self.launcher,
            sys.executable,
            "-m",
            "agentmx",
            "serve",
            "--http-port",
            str(self.http_port),
            "--smtp-port",
            str(self.smtp_port),
            *self._storage_args(),
        ]
        log = open(self.log_path, "ab")  # noqa: SIM115 (lives as long as the process)
        started_at = log.tell()  # a restart appends: an earlier run's lines say nothing of this one
        self.proc = subprocess.Popen(cmd, env=self.env(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if self._may_move and "address already in use" in self.log():
                    raise _PortTaken
                raise RuntimeError(f"agentmx exited with {self.proc.returncode}:\n{self.log()}")
            # Ready by its own line first: the port, free when picked, may have been taken since by
            # another test's server, whose /health answered while this one was failing to bind.
            if self._logged_since(started_at, "agentmx ready") and self._health_answered():
                return self
            time.sleep(READY_POLL)
        raise RuntimeError(f"agentmx did not start within {timeout}s:\n{self.log()}")

    def _health_answered(self) -> bool:
        """GET /health with ``Connection: close``, read until the server's close: True if it was 200.

        The close comes after the server dropped the connection from its count (asyncio calls
        connection_lost before closing the socket), so the server holds none of ours when start()
        returns. A probe closed from this side instead could still count a moment later: enough,
        when a test's connections then arrive in the same accept batch, to fill a connection cap
        one short and turn the last of them away (tests/test_http_guard.py).
        """
        try:
            with socket.create_connection(("127.0.0.1", self.http_port), timeout=1) as sock:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                response = b""
                while chunk := sock.recv(4096):
                    response += chunk
        except OSError:
            return False
        return response.startswith((b"HTTP/1.1 200 ", b"HTTP/1.0 200 "))

    def _logged_since(self, offset: int, text: str) -> bool:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                return text.encode() in log.read()
        except OSError:
            return False

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> ServerProcess:
        self.stop()
        return self.start()
