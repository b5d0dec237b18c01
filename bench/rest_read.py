"""REST read throughput: GET message and GET thread at 64 connections vs a bare Starlette JSON endpoint.

The baseline serves the very JSON document agentmx returned for the same URL (same bytes on the
wire), under uvicorn, single process, like agentmx. Load comes from wrk when installed (C, light
on the shared CPUs), else from an asyncio keep-alive client.

Goals (PERFORMANCE-RELIABILITY.md section 4): >= 1,500 req/s, p99 <= 50 ms at 64 connections;
ours / bare Starlette >= 0.2.

    python bench/rest_read.py --connections 64 --seconds 10
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from urllib.parse import quote

from common import (
    Agentmx,
    Report,
    add_common_args,
    agentmx_server,
    backends,
    baseline_cmd,
    cpu_seconds,
    free_port,
    header,
    run_script,
    subprocess_server,
)
from http_load import load
from smtp_ingest import wait_stored
from smtp_load import aiosmtplib_load

BENCH = "rest_read"


def measure(report: Report, target: str, what: str, url: str, headers: dict[str, str], pid: int | None,
            args: argparse.Namespace) -> None:  # fmt: skip
    load(url, headers, args.connections, 1, not args.no_wrk)  # warm-up
    cpu0 = cpu_seconds(pid)
    res = load(url, headers, args.connections, args.seconds, not args.no_wrk)
    cpu = cpu_seconds(pid) - cpu0
    note = f"{res.tool}, {res.requests} requests" + (f", {res.non_2xx} non-2xx" if res.non_2xx else "")
    report.add(BENCH, target, f"req/s [{what}]", res.rate, "req/s", note)
    report.add(BENCH, target, f"p99 [{what}]", res.p99_ms, "ms", f"p50 {res.p50_ms:.1f} ms")
    if res.requests:
        per = cpu * 1000 / res.requests
        report.add(
            BENCH, target, f"server CPU/req [{what}]", per, "ms", f"= {1000 / per:,.0f} req/s per core"
        )


def seed(app: Agentmx, messages: int) -> dict[str, str]:
    """Deliver some mail and return the URLs under test."""
    import asyncio

    inbox = app.create_inbox("rest")
    asyncio.run(aiosmtplib_load(app.server.smtp_port, inbox, messages, sessions=5, size=4096))
    wait_stored(app, inbox, messages)
    listing = app.http.get(f"/v0/inboxes/{inbox}/messages", params={"limit": 1}).json()
    item = listing["messages"][0]
    return {
        "GET message": f"/v0/inboxes/{inbox}/messages/{quote(item['message_id'], safe='@')}",
        "GET thread": f"/v0/threads/{item['thread_id']}",
    }


def run(args: argparse.Namespace, report: Report) -> None:
    header(f"REST read: {args.connections} connections, {args.seconds}s per endpoint")
    documents: dict[str, object] = {}
    for backend in backends(args.backend):
        with agentmx_server(backend) as app:
            urls = seed(app, args.messages)
            auth = {"Authorization": f"Bearer {app.api_key}"}
            for what, path in urls.items():
                resp = app.http.get(path)
                resp.raise_for_status()
                documents[what] = resp.json()
                pid = app.server.proc.pid if app.server.proc else None
                measure(report, app.label, what, app.server.base_url + path, auth, pid, args)

    with tempfile.TemporaryDirectory() as tmp:
        for what, doc in documents.items():
            path = Path(tmp) / "doc.json"
            path.write_text(json.dumps(doc))
            port = free_port()
            with subprocess_server(baseline_cmd("starlette_json.py", str(port), str(path)), port) as proc:
                measure(
                    report, "bare Starlette JSON", what, f"http://127.0.0.1:{port}/doc", {}, proc.pid, args
                )

    for backend in backends(args.backend):
        ours = f"agentmx-{backend}"
        for what in documents:
            ratio = report.ratio(BENCH, f"req/s [{what}]", ours, "bare Starlette JSON")
            report.ratio(BENCH, f"server CPU/req [{what}]", "bare Starlette JSON", ours)
            rate, p99 = report.get(BENCH, ours, f"req/s [{what}]"), report.get(BENCH, ours, f"p99 [{what}]")
            report.check(BENCH, f"{ours} {what} >= 1,500 req/s", rate, rate >= 1500)
            report.check(BENCH, f"{ours} {what} p99 <= 50 ms", p99, p99 <= 50)
            report.check(BENCH, f"{ours} {what} / bare Starlette >= 0.2", ratio, ratio >= 0.2)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--messages", type=int, default=50, help="messages delivered before reading")
    p.add_argument("--no-wrk", action="store_true", help="use the asyncio client even if wrk is installed")
    add_common_args(p)
    return p


if __name__ == "__main__":
    run_script(parser, run)
