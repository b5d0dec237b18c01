"""B2/B3: inbound SMTP -> WebSocket message.received latency, and fan-out to many connections.

Mail is injected over SMTP at ``--rate`` messages/s for ``--seconds``; every WebSocket client is
subscribed to the inbox and timestamps each frame on arrival. Latency runs from the start of the
SMTP transaction to the frame (end to end, conservative), and is also reported from the 250.
Baseline in the same run: aiosmtpd handler -> in-process websockets.broadcast() (the floor), driven
by the same sender and the same client harness. Clients do not offer permessage-deflate (neither side
then spends CPU compressing per connection); pass --deflate to offer it like the SDK does.

Goals (PERFORMANCE-RELIABILITY.md section 4): p50 <= 100 ms / p99 <= 250 ms inbound->WS at low fan-out;
p99 <= 100 ms at 1,000 connections; ours p99 / bare broadcast p99 <= 1.5.

    python bench/ws_latency.py --fanout 1000 --rate 20 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import (
    Report,
    add_common_args,
    agentmx_server,
    backends,
    baseline_cmd,
    cpu_seconds,
    finish,
    free_port,
    header,
    latency_summary,
    subprocess_server,
)
from smtp_load import LoadResult, send_one
from websockets.asyncio.client import ClientConnection, connect

BENCH = "ws"
SUBJECT = re.compile(r"bench message (\d+)")


@dataclass
class Probe:
    started: dict[int, float] = field(default_factory=dict)
    acked: dict[int, float] = field(default_factory=dict)
    arrivals: list[tuple[int, float]] = field(default_factory=list)
    server_cpu: float = float("nan")

    def on_frame(self, text: str) -> None:
        now = time.perf_counter()
        match = SUBJECT.search(text)
        if match and '"event"' in text:
            self.arrivals.append((int(match.group(1)), now))

    @property
    def frames(self) -> int:
        return len(self.arrivals)

    def from_start(self) -> list[float]:
        return [t - self.started[n] for n, t in self.arrivals if n in self.started]

    def from_ack(self) -> list[float]:
        """May be negative: a server can publish the event before the client has read its 250."""
        return [t - self.acked[n] for n, t in self.arrivals if n in self.acked]


async def open_clients(
    url: str, n: int, subscribe: str, headers: dict[str, str], deflate: bool
) -> list[ClientConnection]:
    """Open and subscribe ``n`` connections, 50 handshakes at a time."""
    clients: list[ClientConnection] = []

    async def one() -> ClientConnection:
        ws = await connect(
            url,
            additional_headers=headers,
            compression="deflate" if deflate else None,
            max_size=None,
            open_timeout=60,
            ping_interval=None,
        )
        await ws.send(subscribe)
        while True:  # wait for the acknowledgement
            frame = await asyncio.wait_for(ws.recv(), 30)
            if isinstance(frame, str) and '"subscribed"' in frame:
                return ws
            if isinstance(frame, str) and '"error"' in frame:
                raise RuntimeError(f"subscribe refused: {frame[:200]}")

    for start in range(0, n, 50):
        clients += await asyncio.gather(*(one() for _ in range(min(50, n - start))))
    return clients


async def reader(ws: ClientConnection, probe: Probe) -> None:
    with contextlib.suppress(Exception):
        async for frame in ws:
            if isinstance(frame, str):
                probe.on_frame(frame)


async def measure(
    ws_url: str,
    smtp_port: int,
    rcpt: str,
    conns: int,
    args: argparse.Namespace,
    subscribe: str,
    headers: dict[str, str],
    pid: int | None,
) -> tuple[Probe, LoadResult, float]:
    rss0 = rss_kb(pid)
    clients = await open_clients(ws_url, conns, subscribe, headers, args.deflate)
    rss_per_conn = (rss_kb(pid) - rss0) / conns if pid else float("nan")
    probe, sent = Probe(), LoadResult()
    readers = [asyncio.create_task(reader(ws, probe)) for ws in clients]
    # No collections in this process while it measures: under run_all its heap holds the earlier
    # benches' objects, a full collection took 90-115 ms, and one that fell among the frames' arrivals
    # set the p99 of whatever was measured (the bare broadcast's went to 130-181 ms).
    gc.collect()
    gc.freeze()
    gc.disable()
    cpu0 = cpu_seconds(pid)
    try:
        await _load(smtp_port, rcpt, conns, args, probe, sent)
    finally:
        gc.enable()
        gc.unfreeze()
    probe.server_cpu = cpu_seconds(pid) - cpu0
    for ws in clients:
        await ws.close()
    for task in readers:
        task.cancel()
    return probe, sent, rss_per_conn


async def _load(
    smtp_port: int, rcpt: str, conns: int, args: argparse.Namespace, probe: Probe, sent: LoadResult
) -> None:
    """Send the mail on an open-loop schedule, then wait (up to 15 s) for every frame."""

    async def one(n: int) -> None:
        probe.started[n] = time.perf_counter()
        if await send_one(smtp_port, rcpt, n, args.size, sent):
            probe.acked[n] = time.perf_counter()

    total = int(args.rate * args.seconds)
    tasks = []
    t0 = time.perf_counter()
    for n in range(total):  # open-loop schedule: a slow transaction does not delay the next one
        await asyncio.sleep(max(0.0, t0 + n / args.rate - time.perf_counter()))
        tasks.append(asyncio.create_task(one(n)))
    await asyncio.gather(*tasks)
    expected = len(probe.acked) * conns
    deadline = time.perf_counter() + 15
    while probe.frames < expected and time.perf_counter() < deadline:
        await asyncio.sleep(0.1)


def rss_kb(pid: int | None) -> float:
    if not pid:
        return float("nan")
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return float(line.split()[1])
    return float("nan")


def record(report: Report, target: str, conns: int, probe: Probe, sent: LoadResult, rss: float) -> None:
    name = f"{conns} conns"
    lat = latency_summary(probe.from_start())
    expected = len(sent.acked) * conns
    note = f"{probe.frames}/{expected} frames, {len(sent.acked)} msgs acked"
    report.add(BENCH, target, f"p50 [{name}]", lat["p50_ms"], "ms", note)
    report.add(BENCH, target, f"p99 [{name}]", lat["p99_ms"], "ms")
    ack = latency_summary(probe.from_ack())
    report.add(BENCH, target, f"p99 from 250 [{name}]", ack["p99_ms"], "ms", f"p50 {ack['p50_ms']:.1f} ms")
    report.add(BENCH, target, f"delivered [{name}]", probe.frames / expected if expected else 0.0, "fraction")
    if rss == rss:  # not nan
        report.add(BENCH, target, f"RSS/conn [{name}]", rss, "KB")
    if probe.frames and probe.server_cpu == probe.server_cpu:
        per = probe.server_cpu * 1e6 / probe.frames
        report.add(
            BENCH, target, f"server CPU/frame [{name}]", per, "us", "incl. SMTP ingest of the messages"
        )


def run_target(
    report: Report, target: str, ws_url: str, smtp_port: int, rcpt: str, subscribe: str, headers: dict[str, str],
    pid: int | None, args: argparse.Namespace,
) -> None:  # fmt: skip
    for conns in (args.latency_conns, args.fanout):
        probe, sent, rss = asyncio.run(measure(ws_url, smtp_port, rcpt, conns, args, subscribe, headers, pid))
        record(report, target, conns, probe, sent, rss)


def run(args: argparse.Namespace, report: Report) -> None:
    header(
        f"inbound -> WebSocket: {args.rate} msg/s for {args.seconds}s, {args.latency_conns} and {args.fanout} conns"
    )
    smtp_port, ws_port = free_port(), free_port()
    with subprocess_server(
        baseline_cmd("smtp_ws_floor.py", str(smtp_port), str(ws_port)), smtp_port, ws_port
    ) as proc:
        run_target(report, "bare aiosmtpd->broadcast", f"ws://127.0.0.1:{ws_port}/", smtp_port,
                   "ws@bench.example", '{"type": "subscribe"}', {}, proc.pid, args)  # fmt: skip

    for backend in backends(args.backend):
        with agentmx_server(backend) as app:
            inbox = app.create_inbox("wsbench")
            subscribe = json.dumps({"type": "subscribe", "inbox_ids": [inbox]})
            pid = app.server.proc.pid if app.server.proc else None
            run_target(report, app.label, app.server.ws_url + "/v0", app.server.smtp_port, inbox, subscribe,
                       {"Authorization": f"Bearer {app.api_key}"}, pid, args)  # fmt: skip

    for backend in backends(args.backend):
        ours = f"agentmx-{backend}"
        lat_name, fan_name = f"{args.latency_conns} conns", f"{args.fanout} conns"
        p50 = report.get(BENCH, ours, f"p50 [{lat_name}]")
        p99 = report.get(BENCH, ours, f"p99 [{lat_name}]")
        report.check(BENCH, f"{ours} inbound->WS p50 <= 100 ms", p50, p50 <= 100)
        report.check(BENCH, f"{ours} inbound->WS p99 <= 250 ms", p99, p99 <= 250)
        fan = report.get(BENCH, ours, f"p99 [{fan_name}]")
        report.check(BENCH, f"{ours} p99 <= 100 ms at {args.fanout} conns", fan, fan <= 100)
        ratio = report.ratio(BENCH, f"p99 [{fan_name}]", ours, "bare aiosmtpd->broadcast")
        report.check(
            BENCH, f"{ours} p99 / bare broadcast p99 <= 1.5 at {args.fanout} conns", ratio, ratio <= 1.5
        )
        delivered = report.get(BENCH, ours, f"delivered [{fan_name}]")
        report.check(
            BENCH, f"{ours} every frame delivered at {args.fanout} conns", delivered, delivered >= 1.0
        )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=10.0, help="inbound messages per second")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--latency-conns", type=int, default=5, help="connections for the latency run")
    p.add_argument("--fanout", type=int, default=1000, help="connections for the fan-out run")
    p.add_argument("--size", type=int, default=2048, help="message size in bytes")
    p.add_argument("--deflate", action="store_true", help="offer permessage-deflate like the SDK")
    add_common_args(p)
    return p


def main(argv: Any = None) -> None:
    ns = parser().parse_args(argv)
    rep = Report()
    run(ns, rep)
    finish(rep, ns.json)


if __name__ == "__main__":
    main()
