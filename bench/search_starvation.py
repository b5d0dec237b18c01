"""Does a non-ASCII search on SQLite starve the event loop? Cheap GETs beside repeated full-scan searches.

SQLite searches run on worker threads (db/sqlite_scans), which frees the loop because sqlite3 lets go
of the GIL while SQLite steps. A search for non-ASCII text used a Python lower() per row, which takes
the GIL for every row scanned. This seeds one inbox with --messages messages (straight into the
database, like tests/test_scans_off_loop.py; only a few match, so each search scans them all), then
for each query runs --searchers clients searching in a loop for --seconds while one client GETs a
message every 10 ms, and reports the GETs' latency, the searches' duration and the server's CPU per
search (utime+stime of the server process).

    python bench/search_starvation.py --messages 100000 --src /work/main/src --src src
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from common import cpu_seconds, percentile

from agentmx.testing.mailbox_seed import seed_messages
from agentmx.testing.server import ServerProcess

QUERIES = ["überweisung", "transfer", "会议"]
MATCH_EVERY = 33_333  # messages whose subject has every query's word: 3 in 100,000


def seed(data_dir: Path, messages: int) -> tuple[str, str]:
    """A server's data folder with one inbox of ``messages`` messages; returns (inbox, key)."""
    server = ServerProcess(data_dir)
    server.start()
    try:
        key = server.create_key()
        with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {key}"}) as http:
            inbox = http.post("/v0/inboxes", json={"username": "searched"}).json()["inbox_id"]
    finally:
        server.stop()
    body = "Hallo Jürgen, anbei die Rechnung für März. " + "body text of an ordinary message " * 30
    seed_messages(
        data_dir / "agentmx.db",
        inbox,
        messages,
        "Rechnung Nummer ",
        body,
        sender="Jürgen Groß <a@example.com>",
        marked_subject="Überweisung Transfer 会议 ",
        mark_every=MATCH_EVERY,
    )
    return inbox, key


def measure(
    server: ServerProcess, inbox: str, key: str, q: str | None, args: argparse.Namespace
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}"}
    stop = threading.Event()
    searches: list[float] = []
    counts: set[int] = set()

    def search() -> None:
        with httpx.Client(base_url=server.base_url, headers=headers, timeout=120) as own:
            while not stop.is_set():
                t0 = time.perf_counter()
                r = own.get(f"/v0/inboxes/{inbox}/messages/search", params={"q": q})
                searches.append(time.perf_counter() - t0)
                counts.add(r.json()["count"])

    threads = [threading.Thread(target=search) for _ in range(args.searchers if q else 0)]
    assert server.proc is not None
    cpu0 = cpu_seconds(server.proc.pid)
    for t in threads:
        t.start()
    gets: list[float] = []
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=120) as http:
        time.sleep(0.5)
        end = time.perf_counter() + args.seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            assert http.get(f"/v0/inboxes/{inbox}/messages/scan5@example.com").status_code == 200
            gets.append(time.perf_counter() - t0)
            time.sleep(0.01)
    stop.set()
    for t in threads:
        t.join()
    cpu = cpu_seconds(server.proc.pid) - cpu0
    return {
        "q": q or "(none)",
        "gets": len(gets),
        "get_p50_ms": percentile(gets, 50) * 1000,
        "get_p99_ms": percentile(gets, 99) * 1000,
        "get_max_ms": max(gets) * 1000,
        "searches": len(searches),
        "search_p50_ms": percentile(searches, 50) * 1000,
        "cpu_ms_per_search": cpu / len(searches) * 1000 if searches else float("nan"),
        "found": sorted(counts),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--searchers", type=int, default=2)
    parser.add_argument(
        "--src", action="append", required=True, help="PYTHONPATH of the server; repeat to alternate"
    )
    parser.add_argument("--pairs", type=int, default=1)
    parser.add_argument("--queries", nargs="*", default=QUERIES)
    args = parser.parse_args()
    seeded = Path(tempfile.mkdtemp(prefix="agentmx-search-starvation-"))
    try:
        inbox, key = seed(seeded, args.messages)
        for pair in range(args.pairs):
            for src in args.src:
                print(
                    f"pair {pair + 1} src={src} load={Path('/proc/loadavg').read_text().split()[:3]}",
                    flush=True,
                )
                server = ServerProcess(seeded, env={"PYTHONPATH": str(Path(src).resolve())})
                server.start()
                try:
                    for q in [None, *args.queries]:
                        r = measure(server, inbox, key, q, args)
                        print(
                            f"  q={r['q']:<12} GET n={r['gets']:<4} p50={r['get_p50_ms']:.1f}"
                            f" p99={r['get_p99_ms']:.1f} max={r['get_max_ms']:.1f} ms | searches={r['searches']}"
                            f" p50={r['search_p50_ms']:.0f} ms cpu/search={r['cpu_ms_per_search']:.0f} ms"
                            f" found={r['found']}",
                            flush=True,
                        )
                finally:
                    server.stop()
    finally:
        shutil.rmtree(seeded, ignore_errors=True)


if __name__ == "__main__":
    main()
