"""B5: list latency with many stored messages (default 200,000; --messages 1000000 for the full run).

Messages are bulk-inserted straight through SQLAlchemy core into agentmx's own tables (threads of
``--per-thread`` messages spread over ``--inboxes`` inboxes, each message labelled 'received'),
then single-client request latency is measured for:
  * GET /v0/inboxes/{id}/messages?limit=50 (first page, random inbox) and a page 5 deep (cursor),
  * GET /v0/inboxes/{id}/threads?limit=50 and GET /v0/threads?limit=50 (organization-wide).
Peer in the same run: the equivalent keyset SQL through the raw driver (sqlite3 / asyncpg).

Goal (PERFORMANCE-RELIABILITY.md section 4): list p99 <= 30 ms; API p99 / raw SQL p99 <= 3 (+2 ms).

    python bench/list_latency.py --messages 1000000 --backend both
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from common import (
    Agentmx,
    Report,
    add_common_args,
    agentmx_server,
    backends,
    header,
    latency_summary,
    run_script,
)
from sqlalchemy import Table, insert, text
from sqlalchemy.ext.asyncio import create_async_engine

from agentmx.db.models import Inbox, Message, MessageLabel, Thread
from agentmx.settings import normalize_database_url

BENCH = "list_latency"
BATCH = 5000


def _fill_required(table: Table, row: dict[str, Any]) -> dict[str, Any]:
    """Give every NOT NULL column without a default a neutral value, so the seed survives schema additions."""
    for col in table.columns:
        if col.name in row or col.nullable or col.default is not None or col.server_default is not None:
            continue
        if col.primary_key and col.autoincrement is True:
            continue
        try:
            ptype: type = col.type.python_type
        except NotImplementedError:
            ptype = str
        row[col.name] = {int: 0, bool: False, list: [], dict: {}, datetime: row.get("created_at")}.get(
            ptype, ""
        )
    return row


async def seed(url: str, org: str, pod: str, args: argparse.Namespace) -> float:
    """Insert inboxes, threads, messages and labels in batches; returns rows per second."""
    engine = create_async_engine(normalize_database_url(url))
    rng = random.Random(7)
    base = datetime(2026, 1, 1, tzinfo=UTC)
    inbox_ids = [f"list{i}@agentmx.localhost" for i in range(args.inboxes)]
    rows_done = 0
    t0 = time.perf_counter()
    async with engine.begin() as conn:
        await conn.execute(
            insert(Inbox.__table__),
            [
                _fill_required(
                    Inbox.__table__,
                    {"id": i, "organization_id": org, "pod_id": pod, "username": i.split("@")[0],
                     "domain": "agentmx.localhost", "metadata": {}, "created_at": base, "updated_at": base},
                )
                for i in inbox_ids
            ],
        )  # fmt: skip
    n = 0
    while n < args.messages:
        threads: list[dict[str, Any]] = []
        messages: list[dict[str, Any]] = []
        labels: list[dict[str, Any]] = []
        for _ in range(BATCH // args.per_thread):
            if n >= args.messages:
                break
            inbox = inbox_ids[rng.randrange(len(inbox_ids))]
            thread_id = f"thd_bench{n:010d}"
            count = min(args.per_thread, args.messages - n)
            ts0 = base + timedelta(seconds=n * 7)
            for k in range(count):
                ts = ts0 + timedelta(seconds=k)
                pk = f"msg_bench{n + k:010d}"
                messages.append(
                    {"id": pk, "message_id": f"<{pk}@bench.example>", "organization_id": org, "pod_id": pod,
                     "inbox_id": inbox, "thread_id": thread_id, "direction": "inbound", "timestamp": ts,
                     "from_addr": "Sender <sender@bench.example>", "to": [inbox], "cc": [], "bcc": [],
                     "reply_to": [], "subject": f"subject {n}", "preview": "preview text " * 5,
                     "text": "body text " * 40, "references": [], "headers": {}, "size": 4096,
                     "created_at": ts, "updated_at": ts},
                )  # fmt: skip
                labels.append({"message_pk": pk, "label": "received"})
                if (n + k) % 3 == 0:
                    labels.append({"message_pk": pk, "label": "unread"})
            threads.append(
                {"id": thread_id, "organization_id": org, "pod_id": pod, "inbox_id": inbox,
                 "subject": f"subject {n}", "preview": "preview text", "senders": ["sender@bench.example"],
                 "recipients": [inbox], "last_message_id": f"<msg_bench{n + count - 1:010d}@bench.example>",
                 "message_count": count, "size": 4096 * count, "timestamp": ts0 + timedelta(seconds=count - 1),
                 "received_timestamp": ts0, "created_at": ts0, "updated_at": ts0},
            )  # fmt: skip
            n += count
        async with engine.begin() as conn:
            await conn.execute(
                insert(Thread.__table__), [_fill_required(Thread.__table__, r) for r in threads]
            )
            await conn.execute(
                insert(Message.__table__), [_fill_required(Message.__table__, r) for r in messages]
            )
            await conn.execute(insert(MessageLabel.__table__), labels)
        rows_done += len(threads) + len(messages) + len(labels)
        if n % 100_000 < BATCH:
            print(
                f"    seeded {n:,} messages ({rows_done / (time.perf_counter() - t0):,.0f} rows/s)",
                flush=True,
            )
    async with engine.begin() as conn:
        await conn.execute(text("ANALYZE"))
    await engine.dispose()
    return rows_done / (time.perf_counter() - t0)


def timed_get(app: Agentmx, path: str, params: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    t0 = time.perf_counter()
    resp = app.http.get(path, params=params)
    elapsed = time.perf_counter() - t0
    resp.raise_for_status()
    return elapsed, resp.json()


def measure_api(app: Agentmx, inboxes: list[str], samples: int, report: Report) -> None:
    rng = random.Random(3)
    cases: dict[str, list[float]] = {
        "inbox messages p1": [],
        "inbox messages p5": [],
        "inbox threads p1": [],
        "org threads p1": [],
    }
    for _ in range(5):  # warm-up
        timed_get(app, f"/v0/inboxes/{inboxes[0]}/messages", {"limit": 50})
    for i in range(samples):
        inbox = rng.choice(inboxes)
        t, page = timed_get(app, f"/v0/inboxes/{inbox}/messages", {"limit": 50})
        cases["inbox messages p1"].append(t)
        if i % 5 == 0:  # a deep page: follow the cursor four times, time the fifth
            for _ in range(4):
                token = page.get("next_page_token")
                if not token:
                    break
                _, page = timed_get(app, f"/v0/inboxes/{inbox}/messages", {"limit": 50, "page_token": token})
            if token := page.get("next_page_token"):
                t, _ = timed_get(app, f"/v0/inboxes/{inbox}/messages", {"limit": 50, "page_token": token})
                cases["inbox messages p5"].append(t)
        cases["inbox threads p1"].append(timed_get(app, f"/v0/inboxes/{inbox}/threads", {"limit": 50})[0])
        if i % 2 == 0:
            cases["org threads p1"].append(timed_get(app, "/v0/threads", {"limit": 50})[0])
    for case, values in cases.items():
        lat = latency_summary(values)
        report.add(
            BENCH,
            app.label,
            f"p99 [{case}]",
            lat["p99_ms"],
            "ms",
            f"p50 {lat['p50_ms']:.1f} ms, n={len(values)}",
        )


RAW_SQL = (
    "SELECT m.* FROM messages m WHERE m.inbox_id = {p} ORDER BY m.timestamp DESC, m.id DESC LIMIT 51",
    "SELECT message_pk, label FROM message_labels WHERE message_pk IN ({ids})",
)


def measure_raw(app: Agentmx, inboxes: list[str], samples: int, report: Report) -> None:
    """The same first-page query through the bare driver: the floor for the API's cost."""
    rng = random.Random(3)
    values: list[float] = []
    if app.database_url:
        import asyncpg

        async def go() -> None:
            conn = await asyncpg.connect(app.database_url)
            for i in range(samples + 5):
                t0 = time.perf_counter()
                rows = await conn.fetch(RAW_SQL[0].format(p="$1"), rng.choice(inboxes))
                await conn.fetch(RAW_SQL[1].format(ids="SELECT unnest($1::text[])"), [r["id"] for r in rows])
                if i >= 5:
                    values.append(time.perf_counter() - t0)
            await conn.close()

        asyncio.run(go())
    else:
        conn = sqlite3.connect(str(app.server.data_dir / "agentmx.db"))
        for i in range(samples + 5):
            t0 = time.perf_counter()
            rows = conn.execute(RAW_SQL[0].format(p="?"), (rng.choice(inboxes),)).fetchall()
            ids = [r[0] for r in rows]
            conn.execute(RAW_SQL[1].format(ids=",".join("?" * len(ids)) or "''"), ids).fetchall()
            if i >= 5:
                values.append(time.perf_counter() - t0)
        conn.close()
    lat = latency_summary(values)
    report.add(
        BENCH,
        f"raw SQL ({app.backend})",
        "p99 [inbox messages p1]",
        lat["p99_ms"],
        "ms",
        f"p50 {lat['p50_ms']:.1f} ms",
    )


def org_and_pod(app: Agentmx, inbox: str) -> tuple[str, str]:
    body = app.http.get(f"/v0/inboxes/{inbox}").json()
    pod = body["pod_id"]
    if app.database_url:
        import asyncpg

        async def q() -> str:
            conn = await asyncpg.connect(app.database_url)
            try:
                return str(await conn.fetchval("SELECT organization_id FROM inboxes WHERE id = $1", inbox))
            finally:
                await conn.close()

        return asyncio.run(q()), pod
    conn = sqlite3.connect(str(app.server.data_dir / "agentmx.db"))
    try:
        return conn.execute("SELECT organization_id FROM inboxes WHERE id = ?", (inbox,)).fetchone()[0], pod
    finally:
        conn.close()


def run(args: argparse.Namespace, report: Report) -> None:
    header(f"list latency: {args.messages:,} messages in {args.inboxes} inboxes")
    for backend in backends(args.backend):
        with agentmx_server(backend) as app:
            org, pod = org_and_pod(app, app.create_inbox("listanchor"))
            url = app.database_url or f"sqlite:///{app.server.data_dir / 'agentmx.db'}"
            rate = asyncio.run(seed(url, org, pod, args))
            report.add(BENCH, app.label, "seed rows/s", rate, "rows/s", f"{args.messages:,} messages")
            inboxes = [f"list{i}@agentmx.localhost" for i in range(args.inboxes)]
            measure_api(app, inboxes, args.samples, report)
            measure_raw(app, inboxes, args.samples, report)
            p99 = report.get(BENCH, app.label, "p99 [inbox messages p1]")
            raw = report.get(BENCH, f"raw SQL ({backend})", "p99 [inbox messages p1]")
            report.add(
                BENCH,
                f"{app.label} / raw SQL",
                "p99 [inbox messages p1]",
                p99 / raw if raw else float("nan"),
                "x",
            )
            for case in ("inbox messages p1", "inbox messages p5", "inbox threads p1", "org threads p1"):
                value = report.get(BENCH, app.label, f"p99 [{case}]")
                report.check(
                    BENCH, f"{app.label} {case} p99 <= 30 ms at {args.messages:,}", value, value <= 30
                )
            report.check(BENCH, f"{app.label} API p99 <= 3 x raw + 2 ms", p99, p99 <= 3 * raw + 2)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=200_000)
    p.add_argument("--inboxes", type=int, default=200)
    p.add_argument("--per-thread", type=int, default=4)
    p.add_argument("--samples", type=int, default=200, help="requests per case")
    add_common_args(p)
    return p


if __name__ == "__main__":
    run_script(parser, run)
