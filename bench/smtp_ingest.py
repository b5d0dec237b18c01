"""B1: SMTP ingest throughput, 4 KB messages, 20 concurrent sessions, one connection per message.

Targets, all in the same run: Postfix smtp-sink (C, discards), aiosmtpd Sink (Python, discards),
aiosmtpd + parse + SQLite FULL commit before 250 (durable Python reference), and agentmx
(durable) on SQLite and PostgreSQL, serving SMTP itself and with one SMTP front-end process
(AGENTMX_SMTP_WORKERS=1, target "... w1"; server CPU then counts both processes). Two load
generators: aiosmtplib (asyncio, records each 250 and the DATA->250 latency) and Postfix
smtp-source (C, lighter on the shared CPUs).

Goal (PERFORMANCE-RELIABILITY.md section 4): agentmx >= 500 msg/s and >= 0.6 x aiosmtpd Sink.

With ``--starttls`` every session first negotiates TLS (a self-signed ECDSA P-256 certificate):
aiosmtplib only, against the aiosmtpd Sink with the same certificate (targets "... tls"); the
ratios are printed, the goals are for plain text.

    python bench/smtp_ingest.py --messages 2000 --backend both
    python bench/smtp_ingest.py --messages 2000 --starttls
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import math
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from common import (
    PY,
    Agentmx,
    Report,
    add_common_args,
    agentmx_server,
    backends,
    baseline_cmd,
    cpu_seconds,
    database_cpu_seconds,
    free_port,
    header,
    latency_summary,
    postfix_tool,
    run_script,
    subprocess_server,
    tree_cpu_seconds,
)
from smtp_load import LoadResult, aiosmtplib_load, smtp_source_load

from agentmx.testing.certs import unverified_client_context, write_self_signed

BENCH = "smtp_ingest"
RCPT_BASELINE = "sink@bench.example"
# Messages sent before each measured run. 300, not 100: after 100, a PostgreSQL target still opened
# ~20 pool connections during the measured run (each one's first statements cost its backend
# 20-40 ms: a start-up cost, not a rate).
WARM_UP = 300


def label(backend: str, smtp_workers: int, tls: bool = False) -> str:
    return f"agentmx-{backend}" + (f" w{smtp_workers}" if smtp_workers else "") + (" tls" if tls else "")


def record(
    report: Report,
    target: str,
    gen: str,
    res: LoadResult | None,
    cpu: float,
    own_cpu: float = math.nan,
    db_cpu: float = math.nan,
) -> None:
    if res is None:
        return
    note = f"gen={gen}, {len(res.acked)}/{res.sent} acked"
    if res.errors:
        note += f", {res.errors} errors ({'; '.join(res.error_samples[:2])})"
    report.add(BENCH, target, f"msg/s [{gen}]", res.rate, "msg/s", note)
    if res.data_latency:
        lat = latency_summary(res.data_latency)
        report.add(
            BENCH, target, f"DATA->250 p99 [{gen}]", lat["p99_ms"], "ms", f"p50 {lat['p50_ms']:.1f} ms"
        )
    if res.acked and cpu == cpu:  # not nan
        per_msg = cpu * 1000 / len(res.acked)
        report.add(
            BENCH, target, f"server CPU/msg [{gen}]", per_msg, "ms", f"= {1000 / per_msg:,.0f} msg/s per core"
        )
    if res.acked and own_cpu == own_cpu and own_cpu != cpu:
        # With front ends: the server process alone (one thread runs every batch, so it bounds the rate).
        own = own_cpu * 1000 / len(res.acked)
        report.add(BENCH, target, f"server process CPU/msg [{gen}]", own, "ms", "without its SMTP front ends")
    if res.acked and db_cpu == db_cpu:
        per_msg = db_cpu * 1000 / len(res.acked)
        report.add(BENCH, target, f"PostgreSQL backends CPU/msg [{gen}]", per_msg, "ms", "its database's")


def drive(
    port: int,
    rcpt: str,
    args: argparse.Namespace,
    target: str,
    report: Report,
    pid: int | None,
    database_url: str | None = None,
) -> None:
    """Warm up, then run both load generators against one listening server (and its database's
    PostgreSQL backends' CPU with ``database_url``)."""
    tls = unverified_client_context() if args.starttls else None
    asyncio.run(aiosmtplib_load(port, rcpt, min(WARM_UP, args.messages), args.sessions, args.size, tls=tls))
    if "aiosmtplib" in args.generators:
        cpu0, own0, db0 = tree_cpu_seconds(pid), cpu_seconds(pid), database_cpu_seconds(database_url)
        res = asyncio.run(aiosmtplib_load(port, rcpt, args.messages, args.sessions, args.size, tls=tls))
        cpu, own, db = (
            tree_cpu_seconds(pid) - cpu0,
            cpu_seconds(pid) - own0,
            database_cpu_seconds(database_url) - db0,
        )
        record(report, target, "aiosmtplib", res, cpu, own, db)
    if "smtp-source" in args.generators:
        cpu0, own0, db0 = tree_cpu_seconds(pid), cpu_seconds(pid), database_cpu_seconds(database_url)
        res2 = smtp_source_load(port, rcpt, args.messages, args.sessions, args.size)
        cpu, own, db = (
            tree_cpu_seconds(pid) - cpu0,
            cpu_seconds(pid) - own0,
            database_cpu_seconds(database_url) - db0,
        )
        record(report, target, "smtp-source", res2, cpu, own, db)


@contextlib.contextmanager
def smtp_sink() -> Iterator[tuple[int, int] | None]:
    tool = postfix_tool("smtp-sink")
    if tool is None:
        yield None
        return
    port = free_port()
    with subprocess_server([tool, "-u", "nobody", f"127.0.0.1:{port}", "256"], port) as proc:
        yield port, proc.pid


def wait_stored(app: Agentmx, inbox: str, expected: int, timeout: float = 60.0) -> int:
    """Inbound processing may finish after the 250: wait for rows to stop growing."""
    deadline, last, stable_since = time.monotonic() + timeout, -1, time.monotonic()
    while time.monotonic() < deadline:
        count = len(app.stored_message_ids(inbox))
        if count >= expected:
            return count
        if count != last:
            last, stable_since = count, time.monotonic()
        elif time.monotonic() - stable_since > 5:
            return count
        time.sleep(0.5)
    return last


def aiosmtpd_sink(args: argparse.Namespace, report: Report, certs: Path | None) -> None:
    """The aiosmtpd Sink baseline; with ``certs``, offering (and requiring) STARTTLS."""
    port = free_port()
    tls = ["--tlscert", str(certs / "cert.pem"), "--tlskey", str(certs / "key.pem")] if certs else []
    cmd = [PY, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{port}", *tls, "-c", "aiosmtpd.handlers.Sink"]
    with subprocess_server(cmd, port) as proc:
        drive(port, RCPT_BASELINE, args, "aiosmtpd Sink" + (" tls" if certs else ""), report, proc.pid)


def run_baselines(args: argparse.Namespace, report: Report, certs: Path | None) -> None:
    if certs is not None:  # the one baseline that speaks STARTTLS
        aiosmtpd_sink(args, report, certs)
        return
    with smtp_sink() as sink:
        if sink:
            drive(sink[0], RCPT_BASELINE, args, "postfix smtp-sink", report, sink[1])

    aiosmtpd_sink(args, report, None)

    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        with subprocess_server(
            baseline_cmd("durable_sink.py", str(port), str(Path(tmp) / "m.db")), port
        ) as proc:
            drive(port, RCPT_BASELINE, args, "aiosmtpd+sqlite FULL", report, proc.pid)


def run(args: argparse.Namespace, report: Report) -> None:
    header(
        f"SMTP ingest: {args.messages} x {args.size} B, {args.sessions} sessions{', STARTTLS' * args.starttls}"
    )
    if args.starttls:
        args.generators = ["aiosmtplib"]  # smtp-source and smtp-sink speak no TLS
        with tempfile.TemporaryDirectory() as tmp:
            write_self_signed(Path(tmp))
            measure(args, report, Path(tmp))
        return
    if postfix_tool("smtp-sink") is None:
        report.note(
            "postfix smtp-sink/smtp-source not installed (apt-get install postfix): C baseline skipped"
        )
        args.generators = [g for g in args.generators if g != "smtp-source"]

    measure(args, report, None)


def measure(args: argparse.Namespace, report: Report, certs: Path | None) -> None:
    """The baselines, agentmx on each backend and front-end count, then the ratios and goals."""
    tls = certs is not None
    if not args.agentmx_only:
        run_baselines(args, report, certs)

    env = (
        {"AGENTMX_SMTP_TLS_CERT": str(certs / "cert.pem"), "AGENTMX_SMTP_TLS_KEY": str(certs / "key.pem")}
        if certs
        else {}
    )
    for backend in backends(args.backend):
        for workers in args.smtp_workers:
            with agentmx_server(backend, env={**env, "AGENTMX_SMTP_WORKERS": str(workers)}) as app:
                inbox = app.create_inbox("ingest")
                target = label(backend, workers, tls)
                drive(
                    app.server.smtp_port,
                    inbox,
                    args,
                    target,
                    report,
                    app.server.proc.pid if app.server.proc else None,
                    app.database_url,
                )
                expected = args.messages * len(args.generators) + min(WARM_UP, args.messages)
                stored = wait_stored(app, inbox, expected)
                report.add(BENCH, target, "stored rows", stored, "msgs", f"of {expected} sent")

    if args.agentmx_only:
        return
    for gen in args.generators:
        metric = f"msg/s [{gen}]"
        for backend, workers in itertools.product(backends(args.backend), args.smtp_workers):
            ours = label(backend, workers, tls)
            sink = "aiosmtpd Sink tls" if tls else "aiosmtpd Sink"
            ratio = report.ratio(BENCH, metric, ours, sink)
            # CPU per message is what a busy shared machine distorts least: Sink CPU / ours CPU.
            report.ratio(BENCH, f"server CPU/msg [{gen}]", sink, ours)
            if tls:
                continue
            report.ratio(BENCH, metric, ours, "postfix smtp-sink")
            rate = report.get(BENCH, ours, metric)
            goal = 500 if backend == "sqlite" else 400
            report.check(BENCH, f"{ours} >= {goal} msg/s [{gen}]", rate, rate >= goal)
            report.check(BENCH, f"{ours} / aiosmtpd Sink >= 0.6 [{gen}]", ratio, ratio >= 0.6)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=1000, help="messages per target and generator")
    p.add_argument("--sessions", type=int, default=20)
    p.add_argument("--size", type=int, default=4096, help="message size in bytes")
    p.add_argument(
        "--generators",
        nargs="+",
        default=["aiosmtplib", "smtp-source"],
        choices=["aiosmtplib", "smtp-source"],
    )
    p.add_argument(
        "--smtp-workers",
        nargs="+",
        type=int,
        default=[0, 1],
        help="AGENTMX_SMTP_WORKERS values to run agentmx with (0: SMTP in the server process)",
    )
    p.add_argument(
        "--starttls",
        action="store_true",
        help="every session negotiates STARTTLS (aiosmtplib and the aiosmtpd Sink only)",
    )
    p.add_argument(
        "--agentmx-only",
        action="store_true",
        help="skip the baselines and the ratios (quick before/after runs of agentmx builds)",
    )
    add_common_args(p)
    return p


if __name__ == "__main__":
    run_script(parser, run)
