"""B4: webhook delivery throughput and latency, and signature checks with two independent libraries.

``--messages`` inbound messages arrive over SMTP (``--sessions`` clients); each produces a
message.received event that agentmx delivers to a local receiver. Reported: deliveries/s (first to
last arrival), p50/p99 from the SMTP 250 to the delivery, and the share of deliveries whose
signature verifies with ``svix`` and with ``standardwebhooks`` (and of tampered bodies rejected).
Peer in the same run: a bare httpx.AsyncClient POST loop (signing with standardwebhooks) with the
same concurrency, into the same receiver.

Goals (PERFORMANCE-RELIABILITY.md section 4): >= 300 deliveries/s, p99 event->first attempt <= 1 s,
ours / bare httpx loop >= 0.3; signature pass rate 1.0 with both libraries.

    python bench/webhooks.py --messages 1000
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time

import httpx
from common import (
    Agentmx,
    Report,
    add_common_args,
    agentmx_server,
    backends,
    baseline_cmd,
    cpu_seconds,
    header,
    latency_summary,
    run_script,
)
from receiver import Delivery, Receiver
from smtp_load import LoadResult, send_one
from standardwebhooks.webhooks import Webhook as StandardWebhook
from svix.webhooks import Webhook as SvixWebhook

BENCH = "webhooks"
SUBJECT = re.compile(rb"bench message (\d+)")


def verify(secret: str, deliveries: list[Delivery]) -> tuple[float, float, float]:
    """Pass rates: svix, standardwebhooks, and tampered bodies rejected (by both)."""
    svix, std = SvixWebhook(secret), StandardWebhook(secret)
    ok_svix = ok_std = rejected = 0
    for d in deliveries:
        try:
            svix.verify(d.body, d.headers)
            ok_svix += 1
        except Exception:
            pass
        std_headers = dict(d.headers)
        for name in ("id", "timestamp", "signature"):  # accept the Svix-named set too
            std_headers.setdefault(f"webhook-{name}", d.headers.get(f"svix-{name}", ""))
        try:
            std.verify(d.body, std_headers)
            ok_std += 1
        except Exception:
            pass
        tampered = d.body.replace(b"bench message", b"bench massage", 1)
        failures = 0
        for verifier, headers in ((svix, d.headers), (std, std_headers)):
            try:
                verifier.verify(tampered, headers)
            except Exception:
                failures += 1
        rejected += failures == 2
    n = len(deliveries) or 1
    return ok_svix / n, ok_std / n, rejected / n


async def agentmx_phase(app: Agentmx, args: argparse.Namespace, report: Report) -> None:
    receiver = Receiver()
    port = await receiver.start()
    inbox = app.create_inbox("hooks")
    async with httpx.AsyncClient(base_url=app.server.base_url, headers=dict(app.http.headers)) as http:
        resp = await http.post(
            "/v0/webhooks", json={"url": f"http://127.0.0.1:{port}/hook", "event_types": ["message.received"]}
        )
        resp.raise_for_status()
        secret = resp.json()["secret"]
    acked: dict[int, float] = {}
    sent = LoadResult()
    queue = iter(range(args.messages))

    async def sender() -> None:
        for n in queue:
            if await send_one(app.server.smtp_port, inbox, n, args.size, sent):
                acked[n] = time.perf_counter()

    pid = app.server.proc.pid if app.server.proc else None
    cpu0 = cpu_seconds(pid)
    t0 = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(args.sessions)))
    ingest = len(acked) / (time.perf_counter() - t0)
    deadline = time.perf_counter() + args.wait
    while len(receiver.deliveries) < len(acked) and time.perf_counter() < deadline:
        await asyncio.sleep(0.1)
    cpu = cpu_seconds(pid) - cpu0
    await receiver.stop()
    got = receiver.deliveries
    latencies = []
    for d in got:
        if (m := SUBJECT.search(d.body)) and int(m.group(1)) in acked:
            latencies.append(d.at - acked[int(m.group(1))])
    span = (got[-1].at - got[0].at) if len(got) > 1 else float("nan")
    target = app.label
    report.add(BENCH, target, "deliveries/s", len(got) / span if span else float("nan"), "/s",
               f"{len(got)}/{len(acked)} delivered; ingest ran at {ingest:.0f} msg/s")  # fmt: skip
    if got:
        per = cpu * 1000 / len(got)
        report.add(
            BENCH,
            target,
            "server CPU/message",
            per,
            "ms",
            f"ingest + delivery = {1000 / per:,.0f}/s per core",
        )
    lat = latency_summary(latencies)
    report.add(BENCH, target, "250->delivery p99", lat["p99_ms"], "ms", f"p50 {lat['p50_ms']:.1f} ms")
    svix, std, rejected = verify(secret, got)
    report.add(BENCH, target, "svix verify", svix, "fraction")
    report.add(BENCH, target, "standardwebhooks verify", std, "fraction")
    report.add(BENCH, target, "tampered rejected", rejected, "fraction")
    report.check(
        BENCH,
        f"{target} every acked message delivered",
        len(got) / max(1, len(acked)),
        len(got) >= len(acked),
    )
    report.check(BENCH, f"{target} p99 250->first attempt <= 1 s", lat["p99_ms"], lat["p99_ms"] <= 1000)
    report.check(
        BENCH,
        f"{target} signatures verify with svix and standardwebhooks",
        min(svix, std),
        min(svix, std) >= 1.0,
    )
    report.check(BENCH, f"{target} tampered payloads rejected", rejected, rejected >= 1.0)


async def peer_phase(args: argparse.Namespace, report: Report) -> None:
    receiver = Receiver()
    port = await receiver.start()
    secret = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    proc = await asyncio.create_subprocess_exec(
        *baseline_cmd("webhook_peer.py", f"http://127.0.0.1:{port}/hook", secret, str(args.messages), str(args.sessions)),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    await proc.communicate()
    await receiver.stop()
    got = receiver.deliveries
    span = (got[-1].at - got[0].at) if len(got) > 1 else float("nan")
    report.add(BENCH, "bare httpx POST loop", "deliveries/s", len(got) / span, "/s", f"{len(got)} posts")
    _, std, _ = verify(secret, got)
    report.add(BENCH, "bare httpx POST loop", "standardwebhooks verify", std, "fraction")


def run(args: argparse.Namespace, report: Report) -> None:
    header(f"webhooks: {args.messages} inbound messages -> deliveries, {args.sessions} sessions")
    asyncio.run(peer_phase(args, report))
    for backend in backends(args.backend):
        with agentmx_server(backend) as app:
            asyncio.run(agentmx_phase(app, args, report))
        ours = f"agentmx-{backend}"
        rate = report.get(BENCH, ours, "deliveries/s")
        ratio = report.ratio(BENCH, "deliveries/s", ours, "bare httpx POST loop")
        report.check(BENCH, f"{ours} >= 300 deliveries/s", rate, rate >= 300)
        report.check(BENCH, f"{ours} / bare httpx loop >= 0.3", ratio, ratio >= 0.3)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=500)
    p.add_argument("--sessions", type=int, default=10)
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--wait", type=float, default=60.0, help="seconds to wait for deliveries after ingest")
    add_common_args(p)
    return p


if __name__ == "__main__":
    run_script(parser, run)
    sys.exit(0)
