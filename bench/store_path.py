"""B1 detail: what storing an inbound message costs the server, without SMTP or the parse (SQLite).

agentmx's own ``mailstore.receive`` runs in this process on messages parsed beforehand (as an SMTP
front end hands them over), ``--batch`` at a time so group commit stores them together, for
``--rounds`` rounds after a warm-up. Reported per message: CPU (median and best round, this
process, including SQLite's commit thread), bytes written (``/proc/self/io``: WAL frames and the
checkpoint that copies them) and bytes in the database file per table (SQLite's ``dbstat``).
No baseline: the figures are for comparing builds (run it with ``PYTHONPATH=<other checkout>/src``).

    python bench/store_path.py --messages 4000
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from common import Report, add_common_args, header, make_message, run_script

from agentmx import features
from agentmx.blobs import BlobStore
from agentmx.db.engine import Database
from agentmx.mail.parse import ParsedMessage, parse_message
from agentmx.services import mailstore
from agentmx.services.runtime import Runtime
from agentmx.settings import Settings
from agentmx.smtp.trace import trace_headers
from agentmx.testing.server import ServerProcess

BENCH = "store_path"
TARGET = "agentmx-sqlite"
SENDER = "load@bench.example"


def written_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


def prepare(data_dir: Path) -> str:
    """Schema and one inbox, made by a real server (then stopped); returns the inbox id."""
    server = ServerProcess(data_dir).start()
    try:
        key = server.create_key()
        resp = httpx.post(
            server.base_url + "/v0/inboxes",
            json={"username": "ingest"},
            headers={"Authorization": f"Bearer {key}"},
        )
        resp.raise_for_status()
        return str(resp.json()["inbox_id"])
    finally:
        server.stop()


async def measure(args: argparse.Namespace, report: Report, data_dir: Path, inbox: str) -> None:
    features.load()
    settings = Settings(data_dir=data_dir)
    rt = Runtime(
        settings=settings,
        db=Database(settings.effective_database_url),
        blobs=BlobStore(settings.effective_blob_dir),
    )
    trace = trace_headers(SENDER, "bench", ("127.0.0.1", 1), settings.hostname, [inbox])
    warm = min(400, args.messages)
    prepared: list[tuple[bytes, ParsedMessage]] = []
    for n in range(args.messages + warm):
        raw = trace + make_message(n, args.size, sender=SENDER, to=inbox)[1]
        prepared.append((raw, parse_message(raw)))

    async def store(items: list[tuple[bytes, ParsedMessage]]) -> None:
        for i in range(0, len(items), args.batch):
            await asyncio.gather(
                *(
                    mailstore.receive(rt, raw, SENDER, [inbox], parsed=p)
                    for raw, p in items[i : i + args.batch]
                )
            )

    try:
        await store(prepared[:warm])
        per_round = args.messages // args.rounds
        cpu: list[float] = []
        written = 0
        for r in range(args.rounds):
            items = prepared[warm + r * per_round : warm + (r + 1) * per_round]
            w0, c0 = written_bytes(), time.process_time()
            await store(items)
            cpu.append((time.process_time() - c0) * 1000 / len(items))
            written += written_bytes() - w0
    finally:
        await rt.db.dispose()
    report.add(
        BENCH, TARGET, "CPU/msg, median", statistics.median(cpu), "ms", f"best round {min(cpu):.3f} ms"
    )
    # A checkpoint comes every 10,000 WAL pages (db/sqlite_inline), so the bytes are over all rounds.
    report.add(
        BENCH, TARGET, "written/msg", written / (per_round * args.rounds) / 1024, "KB", "WAL and checkpoints"
    )


def file_bytes(report: Report, data_dir: Path) -> None:
    conn = sqlite3.connect(f"file:{data_dir / 'agentmx.db'}?mode=ro", uri=True)
    try:
        count = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
        sizes = dict(conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name").fetchall())
    finally:
        conn.close()
    report.add(BENCH, TARGET, "file/msg", sum(sizes.values()) / count / 1024, "KB", f"{count} messages")
    for table in ("events", "messages", "inline_blobs", "threads"):
        report.add(BENCH, TARGET, f"file/msg: {table}", sizes.get(table, 0) / count / 1024, "KB")


def run(args: argparse.Namespace, report: Report) -> None:
    header(f"Store path: {args.messages} x {args.size} B, {args.batch} per batch, SQLite")
    if args.messages < args.rounds or args.batch < 1:
        raise SystemExit("--messages must be at least --rounds, and --batch at least 1")
    if args.backend == "postgres":  # PostgreSQL's writes happen in its own processes, not counted here
        report.note("store_path measures SQLite only: skipped for --backend postgres")
        return
    data_dir = Path(tempfile.mkdtemp(prefix="agentmx-bench-store-"))
    try:
        inbox = prepare(data_dir)
        asyncio.run(measure(args, report, data_dir, inbox))
        file_bytes(report, data_dir)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=4000, help="measured messages (after a warm-up of 400)")
    p.add_argument("--size", type=int, default=4096, help="message size in bytes")
    p.add_argument("--batch", type=int, default=8, help="messages stored concurrently (one group commit)")
    p.add_argument("--rounds", type=int, default=8)
    add_common_args(p)
    return p


if __name__ == "__main__":
    run_script(parser, run)
