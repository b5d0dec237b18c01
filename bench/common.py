"""Shared bench machinery: timing, percentiles, result tables, servers under test and baselines.

Every bench measures agentmx and a baseline in the same run on the same machine and reports
the ratio, because absolute numbers on a shared 2-core box drift from run to run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import platform
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from agentmx.settings import Settings
from agentmx.testing import postgres
from agentmx.testing.server import ServerProcess, free_port

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "bench"
PY = sys.executable

__all__ = ["ServerProcess", "free_port", "postgres"]


# ---------------------------------------------------------------- statistics


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100); nan for no samples."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p99/max in milliseconds."""
    return {
        "p50_ms": percentile(seconds, 50) * 1000,
        "p99_ms": percentile(seconds, 99) * 1000,
        "max_ms": (max(seconds) * 1000) if seconds else math.nan,
        "n": float(len(seconds)),
    }


# ---------------------------------------------------------------- results


@dataclass
class Row:
    bench: str
    target: str
    metric: str
    value: float
    unit: str
    note: str = ""


@dataclass
class Check:
    """A goal from PERFORMANCE-RELIABILITY.md section 4, evaluated on measured values."""

    bench: str
    goal: str
    measured: float
    passed: bool


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, bench: str, target: str, metric: str, value: float, unit: str, note: str = "") -> float:
        self.rows.append(Row(bench, target, metric, float(value), unit, note))
        print(f"  {bench:<14} {target:<26} {metric:<18} {fmt(value):>10} {unit} {note}", flush=True)
        return value

    def get(self, bench: str, target: str, metric: str) -> float:
        for row in reversed(self.rows):
            if (row.bench, row.target, row.metric) == (bench, target, metric):
                return row.value
        return math.nan

    def ratio(self, bench: str, metric: str, ours: str, baseline: str) -> float:
        """Record ours / baseline for one metric measured in this run."""
        a, b = self.get(bench, ours, metric), self.get(bench, baseline, metric)
        value = a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan
        self.add(bench, f"{ours} / {baseline}", metric, value, "x")
        return value

    def check(self, bench: str, goal: str, measured: float, passed: bool) -> None:
        ok = bool(passed) and not math.isnan(measured)
        self.checks.append(Check(bench, goal, measured, ok))
        print(f"  GOAL {bench}: {goal}: {fmt(measured)} -> {'met' if ok else 'NOT met'}", flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)

    def print_table(self) -> None:
        print("\n" + markdown_table(self.rows))
        if self.checks:
            print("\n| bench | goal | measured | met |\n|---|---|---|---|")
            for c in self.checks:
                print(f"| {c.bench} | {c.goal} | {fmt(c.measured)} | {'yes' if c.passed else 'NO'} |")
        for text in self.notes:
            print(f"- {text}")

    def save(self, path: Path) -> None:
        data = {
            "machine": machine_info(),
            "rows": [asdict(r) for r in self.rows],
            "checks": [asdict(c) for c in self.checks],
            "notes": self.notes,
        }
        path.write_text(json.dumps(data, indent=2, default=str))


def fmt(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def markdown_table(rows: Sequence[Row]) -> str:
    lines = ["| bench | target | metric | value | unit | note |", "|---|---|---|---:|---|---|"]
    for r in rows:
        lines.append(f"| {r.bench} | {r.target} | {r.metric} | {fmt(r.value)} | {r.unit} | {r.note} |")
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    load = os.getloadavg()
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_1m": round(load[0], 2),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def cpu_seconds(pid: int | None) -> float:
    """User+system CPU a process has used so far (robust to other load on a shared machine)."""
    if not pid:
        return math.nan
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int | None) -> float:
    """``cpu_seconds`` of a process and its live children (an agentmx server's SMTP front ends)."""
    if not pid:
        return math.nan
    children = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        kids = [int(child) for child in children.read_text().split()]
    except OSError:
        kids = []
    return cpu_seconds(pid) + sum(cpu_seconds(kid) for kid in kids)


def database_cpu_seconds(database_url: str | None) -> float:
    """``cpu_seconds`` of the live PostgreSQL backends connected to ``database_url``'s database (their
    titles name it: "postgres: 15/main: user database 127.0.0.1(port) idle"). Backends that exited
    since the last reading are missed; the server's pool keeps its connections."""
    if not database_url:
        return math.nan
    name = f" {database_url.rsplit('/', 1)[1]} "
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if title.startswith("postgres: ") and name in title:
            cpu = cpu_seconds(int(entry.name))
            total += cpu if cpu == cpu else 0.0  # nan: it exited in between
    return total


def header(title: str) -> None:
    info = machine_info()
    print(f"\n== {title}  (cpus={info['cpus']}, load1={info['loadavg_1m']}, {info['time_utc']})", flush=True)


# ---------------------------------------------------------------- processes


def wait_port(port: int, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


@contextlib.contextmanager
def subprocess_server(
    cmd: list[str], *ports: int, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a baseline server until the block ends, once it listens on every port given."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.Popen(cmd, env=full_env, stdout=subprocess.DEVNULL)
    try:
        for port in ports:
            wait_port(port, proc=proc)
        yield proc
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def baseline_cmd(script: str, *args: str) -> list[str]:
    return [PY, str(BENCH_DIR / "baselines" / script), *args]


def postfix_tool(name: str) -> str | None:
    """smtp-sink / smtp-source from Debian's postfix package, if installed."""
    for candidate in (shutil.which(name), f"/usr/sbin/{name}"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


# ---------------------------------------------------------------- agentmx under test


class Agentmx:
    """A running agentmx plus an organization API key and helpers for bench set-up."""

    def __init__(self, server: ServerProcess, backend: str, database_url: str | None) -> None:
        self.server = server
        self.backend = backend
        self.database_url = database_url
        self.api_key = server.create_key()
        self.http = httpx.Client(
            base_url=server.base_url, headers={"Authorization": f"Bearer {self.api_key}"}, timeout=30
        )

    @property
    def label(self) -> str:
        return f"agentmx-{self.backend}"

    def create_inbox(self, username: str) -> str:
        resp = self.http.post("/v0/inboxes", json={"username": username})
        resp.raise_for_status()
        return str(resp.json()["inbox_id"])

    def stored_message_ids(self, inbox_id: str) -> set[str]:
        """Message-IDs stored for an inbox, read straight from the database (fast for 10k+ rows)."""
        return stored_message_ids(self.server, self.database_url, inbox_id)

    def close(self) -> None:
        self.http.close()


def stored_message_ids(server: ServerProcess, database_url: str | None, inbox_id: str) -> set[str]:
    sql = "SELECT message_id FROM messages WHERE inbox_id = $1"
    if database_url:

        async def fetch() -> set[str]:
            import asyncpg

            conn = await asyncpg.connect(database_url)
            try:
                return {r[0] for r in await conn.fetch(sql, inbox_id)}
            finally:
                await conn.close()

        return asyncio.run(fetch())
    db = server.data_dir / "agentmx.db"
    if not db.exists():
        return set()
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return {r[0] for r in conn.execute(sql.replace("$1", "?"), (inbox_id,))}
    except sqlite3.OperationalError:  # table not there yet
        return set()
    finally:
        conn.close()


def backends(requested: str) -> list[str]:
    """'sqlite', 'postgres' or 'both'; PostgreSQL is skipped (with a note) when unreachable."""
    wanted = ["sqlite", "postgres"] if requested == "both" else [requested]
    if "postgres" in wanted and not postgres.available():
        print(f"  PostgreSQL unreachable at {postgres.ADMIN_URL}: skipping the postgres backend", flush=True)
        wanted.remove("postgres")
    return wanted


# The test harness tunes these for tests (a job poll every 0.1 s, a pool of 10); benches measure the defaults.
PRODUCTION_DEFAULTS = {
    f"AGENTMX_{name.upper()}": str(Settings.model_fields[name].default)
    for name in ("job_poll_interval", "database_pool_size")
}


@contextlib.contextmanager
def agentmx_server(
    backend: str, env: dict[str, str] | None = None, keep_dir: bool = False
) -> Iterator[Agentmx]:
    """Start agentmx on a throwaway SQLite file or PostgreSQL database; tear everything down after.

    AGENTMX_* variables set for the bench reach the server (``AGENTMX_EVENT_LOOP=uvloop make bench``);
    a bench's own ``env`` wins over them.
    """
    tmp = Path(tempfile.mkdtemp(prefix=f"agentmx-bench-{backend}-"))
    url = postgres.create_database("agentmx_bench") if backend == "postgres" else None
    passed = {k: v for k, v in os.environ.items() if k.startswith("AGENTMX_") and k != "AGENTMX_TEST_PG_URL"}
    server = ServerProcess(
        tmp,
        database_url=url,
        env={**PRODUCTION_DEFAULTS, "AGENTMX_LOG_LEVEL": "warning", **passed, **(env or {})},
    )
    app: Agentmx | None = None
    try:
        server.start()
        app = Agentmx(server, backend, url)
        yield app
    finally:
        if app:
            app.close()
        server.stop()
        if url:
            with contextlib.suppress(Exception):
                postgres.drop_database(url)
        if not keep_dir:
            shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- mail


def make_message(
    n: int, size: int = 4096, sender: str = "load@bench.example", to: str = ""
) -> tuple[str, bytes]:
    """A plain-text message of about ``size`` bytes with a unique Message-ID; returns (message_id, bytes)."""
    message_id = f"<bench-{n}-{os.getpid()}-{time.time_ns()}@bench.example>"
    head = (
        f"From: Load Generator <{sender}>\r\n"
        f"To: <{to}>\r\n"
        f"Subject: bench message {n}\r\n"
        f"Message-ID: {message_id}\r\n"
        "Date: Tue, 24 Nov 2026 18:00:00 +0000\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
    )
    line = "The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
    body = (line * (max(0, size - len(head)) // len(line) + 1))[: max(0, size - len(head))]
    return message_id, (head + body).encode()


def add_common_args(parser: Any) -> None:
    parser.add_argument(
        "--backend", default="both", choices=["sqlite", "postgres", "both"], help="agentmx storage"
    )
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")


def finish(report: Report, json_path: Path | None) -> None:
    report.print_table()
    if json_path:
        report.save(json_path)


def run_script(parser: Callable[[], Any], run: Callable[[Any, Report], None]) -> None:
    """A bench script's entry point: parse its arguments, run it, print (and save) the report."""
    ns = parser().parse_args()
    report = Report()
    run(ns, report)
    finish(report, ns.json)
