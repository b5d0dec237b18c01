"""`make bench`: every benchmark at modest sizes (about 15 minutes on 2 cores), one results table.

Each bench measures agentmx and its baseline in the same run and prints the ratio. Sizes are
chosen to keep the whole run short; pass --full for the sizes in BENCHMARKS.md (1M messages,
20 SIGKILLs, 20k SMTP messages, 10-minute fuzz runs), or run a single bench script with its own flags.

    python bench/run_all.py [--full] [--only smtp_ingest ws] [--backend sqlite] [--json out.json]
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

import api_fuzz
import crash_safety
import http_slowloris
import list_latency
import rest_read
import smtp_abuse
import smtp_ingest
import smtp_mime_fuzz
import store_path
import webhook_isolation
import webhooks
import ws_latency
from common import Report, finish

BENCHES = {
    "smtp_ingest": (smtp_ingest, [], ["--messages", "20000"]),
    "smtp_ingest_tls": (smtp_ingest, ["--starttls"], ["--messages", "5000"]),
    "store_path": (store_path, [], ["--messages", "8000"]),
    "crash_safety": (crash_safety, [], ["--kills", "20", "--max-seconds", "600"]),
    "ws": (ws_latency, [], ["--rate", "20", "--seconds", "10"]),
    "rest_read": (rest_read, [], ["--seconds", "15"]),
    "list_latency": (list_latency, [], ["--messages", "1000000", "--inboxes", "10000"]),
    "webhooks": (webhooks, [], ["--messages", "2000"]),
    "webhook_isolation": (webhook_isolation, [], ["--messages", "200"]),
    "smtp_abuse": (
        smtp_abuse,
        ["--messages", "1000", "--rounds", "1"],
        ["--messages", "3000", "--rounds", "3"],
    ),
    "http_slowloris": (http_slowloris, [], ["--connections", "8000", "--seconds", "10"]),
    "http_body_slowloris": (
        http_slowloris,
        ["--attack", "body"],
        ["--attack", "body", "--connections", "8000", "--seconds", "10"],
    ),
    "api_fuzz": (api_fuzz, ["--minutes", "0.5"], ["--minutes", "10"]),
    "mime_fuzz": (smtp_mime_fuzz, ["--minutes", "0.5"], ["--minutes", "10"]),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true", help="the full sizes (takes much longer)")
    p.add_argument("--only", nargs="+", choices=sorted(BENCHES), help="run only these benches")
    p.add_argument("--backend", default="both", choices=["sqlite", "postgres", "both"])
    p.add_argument("--json", type=Path, help="also write all results to this JSON file")
    args = p.parse_args()
    report = Report()
    failed = []
    t0 = time.monotonic()
    for name, (module, default_args, full_args) in BENCHES.items():
        if args.only and name not in args.only:
            continue
        bench_args = [*default_args, *(full_args if args.full else []), "--backend", args.backend]
        try:
            module.run(module.parser().parse_args(bench_args), report)
        except Exception:  # one broken bench must not hide the others' results
            traceback.print_exc()
            failed.append(name)
            report.note(f"{name} failed with an exception (see the log above)")
    report.note(f"total wall time {time.monotonic() - t0:.0f} s")
    finish(report, args.json)
    met = sum(c.passed for c in report.checks)
    print(
        f"\n{met}/{len(report.checks)} goals met; {len(failed)} bench(es) failed to run: {failed or 'none'}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
