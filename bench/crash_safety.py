"""B1 durability: SIGKILL agentmx repeatedly during SMTP ingest; every message that got a 250 must be stored.

A sender keeps ``--sessions`` SMTP clients busy with uniquely Message-ID'd mail and records each
250. A killer SIGKILLs the server at random moments, restarts it on the same ports and storage,
``--kills`` times. Afterwards stored Message-IDs (read from the database) must include every acked
one: acked-but-missing must be 0. Unacked messages may or may not be stored (the client retries them).

    python bench/crash_safety.py --kills 20 --backend both
"""

from __future__ import annotations

import argparse
import asyncio
import random
import threading
import time

from common import Report, add_common_args, agentmx_server, backends, header, run_script
from smtp_load import LoadResult, aiosmtplib_load

BENCH = "crash_safety"


def run_backend(backend: str, args: argparse.Namespace, report: Report) -> None:
    with agentmx_server(backend) as app:
        inbox = app.create_inbox("crash")
        done = threading.Event()
        result = LoadResult()
        kills = 0

        def sender() -> None:
            nonlocal result
            result = asyncio.run(
                aiosmtplib_load(
                    app.server.smtp_port,
                    inbox,
                    messages=10**9,
                    sessions=args.sessions,
                    size=args.size,
                    deadline=args.max_seconds,
                    stop=done.is_set,
                    timeout=10.0,
                )
            )

        thread = threading.Thread(target=sender, daemon=True)
        thread.start()
        rng = random.Random(args.seed)
        t0 = time.monotonic()
        try:
            while kills < args.kills and time.monotonic() - t0 < args.max_seconds:
                time.sleep(rng.uniform(args.min_gap, args.max_gap))
                app.server.kill()
                kills += 1
                app.server.start()
        finally:
            time.sleep(1.0)  # let in-flight transactions finish against the restarted server
            done.set()
            thread.join(timeout=60)
        acked = set(result.acked)
        deadline = time.monotonic() + 30  # inbound processing may complete after the 250
        while True:
            stored = app.stored_message_ids(inbox)
            missing = acked - stored
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(1)
        target = app.label
        report.add(BENCH, target, "SIGKILLs", kills, "")
        report.add(
            BENCH,
            target,
            "acked (250)",
            len(acked),
            "msgs",
            f"{result.sent} attempted, {result.errors} failed",
        )
        report.add(
            BENCH, target, "stored", len(stored & acked), "msgs", f"{len(stored - acked)} unacked also stored"
        )
        report.add(BENCH, target, "acked but missing", len(missing), "msgs", ", ".join(sorted(missing)[:3]))
        report.check(
            BENCH, f"{target}: acked-but-missing == 0 over {kills} SIGKILLs", len(missing), not missing
        )


def run(args: argparse.Namespace, report: Report) -> None:
    header(f"crash safety: {args.kills} SIGKILLs during ingest, {args.sessions} sessions")
    for backend in backends(args.backend):
        run_backend(backend, args, report)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=5)
    p.add_argument("--sessions", type=int, default=10)
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--min-gap", type=float, default=0.5, help="min seconds of load between kills")
    p.add_argument("--max-gap", type=float, default=2.0, help="max seconds of load between kills")
    p.add_argument("--max-seconds", type=float, default=120.0, help="hard bound on the whole run")
    p.add_argument("--seed", type=int, default=1)
    add_common_args(p)
    return p


if __name__ == "__main__":
    run_script(parser, run)
