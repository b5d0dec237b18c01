"""CPU and wall time of `agentmx serve` from exec to its first /health 200, SMTP front ends included.

    PYTHONPATH=src python bench/startup.py [--runs 5] [--postgres] [--smtp-workers 1] [--fresh]

Each run starts a server on a database already migrated (as a restart finds it; --fresh: a new
one), polls /health, and at the first 200 reads the CPU of the server and its children from /proc.
Linux only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from agentmx.testing import postgres
from agentmx.testing.server import free_port

TICK = os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _cpu(pid: int) -> float:
    """Seconds of user and system CPU of one process (its own, not its children's)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _tree_cpu(pid: int) -> tuple[float, float]:
    """The server's CPU and its descendants' (the SMTP front ends)."""
    own = _cpu(pid)
    rest, todo = 0.0, _children(pid)
    while todo:
        child = todo.pop()
        try:
            rest += _cpu(child)
        except OSError:
            continue
        todo += _children(child)
    return own, rest


def one_start(data_dir: Path, database_url: str | None, workers: str) -> tuple[float, float, float]:
    """(wall seconds, server CPU seconds, front-end CPU seconds) to the first /health 200."""
    http_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTMX_")}
    env.update(
        AGENTMX_HTTP_PORT=str(http_port),
        AGENTMX_SMTP_PORT=str(free_port()),
        AGENTMX_SMTP_WORKERS=workers,
        AGENTMX_LOG_LEVEL="warning",
        AGENTMX_DATABASE_POOL_SIZE="10",
    )
    args = [sys.executable, "-m", "agentmx", "serve", "--data-dir", str(data_dir)]
    if database_url:
        args += ["--database-url", database_url]
    began = time.perf_counter()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with httpx.Client(timeout=1.0) as client:
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"serve exited with {proc.returncode}")
                try:
                    if client.get(f"http://127.0.0.1:{http_port}/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.005)
        wall = time.perf_counter() - began
        own, children = _tree_cpu(proc.pid)
        return wall, own, children
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--postgres", action="store_true")
    parser.add_argument("--smtp-workers", default="0")
    parser.add_argument("--fresh", action="store_true", help="a new database each run")
    opts = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        url_kept: str | None = None
        for run in range(opts.runs + 1):  # run 0 migrates (unless --fresh) and warms the file cache
            data_dir = Path(tmp) / (f"run{run}" if opts.fresh else "data")
            url = None
            if opts.postgres:
                url = url_kept if url_kept and not opts.fresh else postgres.create_database()
                url_kept = url
            try:
                measured = one_start(data_dir, url, opts.smtp_workers)
            finally:
                if opts.postgres and opts.fresh:
                    postgres.drop_database(url)
            if run:
                results.append(measured)
            if opts.fresh:
                shutil.rmtree(data_dir, ignore_errors=True)
        if url_kept and not opts.fresh:
            postgres.drop_database(url_kept)
    for name, column in (("wall", 0), ("server cpu", 1), ("front-end cpu", 2)):
        values = [r[column] for r in results]
        print(
            f"{name:14} median {statistics.median(values):.3f} s  runs {' '.join(f'{v:.2f}' for v in values)}"
        )


if __name__ == "__main__":
    main()
