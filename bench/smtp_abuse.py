"""B7: legitimate SMTP ingest under a slowloris attack and oversized messages, as a ratio in one run.

Per backend, one agentmx server with its default settings (or --max-connections):
  * baseline: legitimate ingest (4 KB, 20 sessions, one connection per message) without attack;
  * slowloris: ~1,000 attacker connections (bench/smtp_attacker.py, its own process, from
    127.0.0.2.. so the per-IP cap is not what holds them off) idle or dribbling a command or
    a DATA body a byte at a time, while the same legitimate load runs again;
  baseline and slowloris alternate (B A B A B with --rounds 2), because the machine is shared;
  * oversize: a few clients push 10x the size limit (as lines, then as one line without CRLF)
    while the slowloris attack and the legitimate load go on: each must get 552, RSS bounded.
Every legitimately acked Message-ID must be stored. Server RSS (VmRSS/VmHWM from /proc) is
sampled throughout; its open file descriptors and RLIMIT_NOFILE are reported.

Goals (PERFORMANCE-RELIABILITY.md section 4): legitimate msg/s under 1k slowloris connections
>= 0.8 x without attack; 552 above the size limit with bounded RSS.

    python bench/smtp_abuse.py --messages 2000 --connections 1000 --backend both
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import (
    BENCH_DIR,
    PY,
    Agentmx,
    Report,
    add_common_args,
    agentmx_server,
    backends,
    cpu_seconds,
    header,
    run_script,
)
from smtp_ingest import wait_stored
from smtp_load import LoadResult, aiosmtplib_load

BENCH = "smtp_abuse"
MB = 1024 * 1024


# ---------------------------------------------------------------- the server process, from /proc


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process in kB."""
    out = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def open_fds(pid: int) -> int:
    try:
        return len(list(Path(f"/proc/{pid}/fd").iterdir()))
    except OSError:
        return -1


def fd_limit(pid: int) -> str:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return f"{soft}/{hard}"
    return "?"


class RssSampler:
    """Samples the server's VmRSS every 0.2 s; peak() is the highest since the last reset()."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self._peak = max(self._peak, proc_status(self.pid).get("VmRSS", 0))

    def reset(self) -> None:
        self._peak = proc_status(self.pid).get("VmRSS", 0)

    def peak_mb(self) -> float:
        return self._peak / 1024

    def now_mb(self) -> float:
        return proc_status(self.pid).get("VmRSS", 0) / 1024


# ---------------------------------------------------------------- the attacker process


class Attacker:
    """bench/smtp_attacker.py as a subprocess; ``status`` is its latest JSON status line."""

    def __init__(self, cmd: list[str]) -> None:
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        self.status: dict[str, Any] = {}
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(json.JSONDecodeError):
                self.status = json.loads(line)

    def wait_for(self, predicate: Any, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.status and predicate(self.status):
                return True
            if self.proc.poll() is not None:
                return False
            time.sleep(0.25)
        return False

    def stop(self) -> dict[str, Any]:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._reader.join(timeout=5)
        return self.status


@contextlib.contextmanager
def attacking(port: int, rcpt: str, *extra: str) -> Iterator[Attacker]:
    cmd = [PY, str(BENCH_DIR / "smtp_attacker.py"), "--port", str(port), "--rcpt", rcpt, *extra]
    attacker = Attacker(cmd)
    try:
        yield attacker
    finally:
        attacker.stop()


# ---------------------------------------------------------------- phases


@dataclass
class Phase:
    """One legitimate load: its result and the server CPU it cost (attack handling included)."""

    res: LoadResult
    cpu: float

    @property
    def cpu_ms_per_msg(self) -> float:
        return self.cpu * 1000 / len(self.res.acked) if self.res.acked else math.nan


def legit(app: Agentmx, inbox: str, args: argparse.Namespace) -> Phase:
    pid = app.server.proc.pid if app.server.proc else None
    cpu0 = cpu_seconds(pid)
    res = asyncio.run(
        aiosmtplib_load(
            app.server.smtp_port, inbox, args.messages, args.sessions, 4096, deadline=args.deadline
        )
    )
    return Phase(res, cpu_seconds(pid) - cpu0)


def record_load(report: Report, target: str, phase: str, run: Phase) -> None:
    res = run.res
    note = f"{len(res.acked)}/{res.sent} acked in {res.elapsed:.1f} s, server CPU {run.cpu_ms_per_msg:.2f} ms/msg"
    if res.errors:
        note += f", {res.errors} errors ({'; '.join(res.error_samples[:2])})"
    report.add(BENCH, target, f"legit msg/s [{phase}]", res.rate, "msg/s", note)


def record_attacker(report: Report, target: str, phase: str, status: dict[str, Any]) -> None:
    note = (
        f"peak {status.get('peak_held', 0)}, opened {status.get('opened', 0)}, "
        f"421 at connect {status.get('refused_421', 0)}, closed by server {status.get('closed_by_server', 0)}"
    )
    if status.get("errors"):
        note += f", errors {status['errors']}"
    report.add(BENCH, target, f"attack conns held [{phase}]", status.get("held", 0), "conns", note)


def slowloris_phase(app: Agentmx, inbox: str, args: argparse.Namespace, report: Report, n: int) -> Phase:
    """The legitimate load while ~1,000 slowloris connections are held open."""
    target, pid = app.label, app.server.proc.pid if app.server.proc else 0
    extra = ["--connections", str(args.connections), "--ramp", str(args.ramp)]
    with attacking(app.server.smtp_port, inbox, *extra) as attacker:
        attacker.wait_for(lambda s: s["opened"] >= args.connections, args.ramp + 30)
        time.sleep(2)  # let the last connects settle
        record_attacker(report, target, f"slowloris {n}, before load", attacker.status)
        report.add(BENCH, target, f"server fds [slowloris {n}]", open_fds(pid), "fds")
        report.add(BENCH, target, f"RSS [slowloris {n} held]", proc_status(pid).get("VmRSS", 0) / 1024, "MB")
        run = legit(app, inbox, args)
        record_load(report, target, f"slowloris {n}", run)
        attacker_cpu = cpu_seconds(attacker.proc.pid)
        record_attacker(report, target, f"slowloris {n}, after load", attacker.stop())
        report.note(f"{target} slowloris {n}: the attacker process used {attacker_cpu:.1f} s CPU in all")
    return run


def oversize_phase(
    app: Agentmx, inbox: str, args: argparse.Namespace, report: Report, rss: RssSampler, shape: str
) -> Phase:
    """Oversized pushers plus the slowloris attack, during a legitimate load."""
    limit = int(args.size_limit)
    extra = ["--connections", str(args.connections), "--oversize", str(args.oversize)]
    extra += ["--oversize-bytes", str(limit * 10), "--oversize-shape", shape]
    target = app.label
    rss.reset()
    before = rss.now_mb()
    with attacking(app.server.smtp_port, inbox, *extra) as attacker:
        run = legit(app, inbox, args)
        attacker.wait_for(lambda s: len(s["oversize_replies"]) >= args.oversize, args.deadline)
        status = attacker.stop()
    replies = status.get("oversize_replies", [])
    got_552 = sum(r.startswith("552") for r in replies)
    seconds = status.get("oversize_seconds") or [math.nan]
    report.add(
        BENCH, target, f"oversize 552 [{shape}]", got_552, "replies",
        f"of {args.oversize} x {limit * 10 / MB:.0f} MB; {max(seconds):.1f} s each at most; {replies[:1]}",
    )  # fmt: skip
    growth = rss.peak_mb() - before
    report.add(BENCH, target, f"RSS growth [{shape}]", growth, "MB", f"peak {rss.peak_mb():.0f} MB")
    report.check(
        BENCH, f"{target}: 552 for every oversized message [{shape}]", got_552, got_552 == args.oversize
    )
    bound = args.rss_bound_mb
    report.check(BENCH, f"{target}: RSS growth <= {bound} MB with {args.oversize} oversized [{shape}]", growth, growth <= bound)  # fmt: skip
    record_load(report, target, f"oversize {shape} + slowloris", run)
    return run


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def run_backend(backend: str, args: argparse.Namespace, report: Report) -> None:
    env = {"AGENTMX_SMTP_MAX_CONNECTIONS": str(args.max_connections)} if args.max_connections else {}
    with agentmx_server(backend, env=env) as app:
        assert app.server.proc is not None
        pid = app.server.proc.pid
        target = app.label
        inbox = app.create_inbox("abuse")
        report.note(
            f"{target} server RLIMIT_NOFILE soft/hard: {fd_limit(pid)}; cap {args.max_connections or 'default'}"
        )
        asyncio.run(aiosmtplib_load(app.server.smtp_port, inbox, 100, args.sessions, 4096))  # warm-up
        acked: list[str] = []
        baselines: list[Phase] = []
        attacks: list[Phase] = []
        with RssSampler(pid) as rss:
            report.add(BENCH, target, "RSS before", rss.now_mb(), "MB")
            # Baseline and attack alternate (B A B A B): drift on a shared machine hits both alike.
            for n in range(1, args.rounds + 1):
                baselines.append(legit(app, inbox, args))
                record_load(report, target, f"baseline {n}", baselines[-1])
                rss.reset()
                attacks.append(slowloris_phase(app, inbox, args, report, n))
                report.add(BENCH, target, f"RSS peak [slowloris {n}]", rss.peak_mb(), "MB")
            baselines.append(legit(app, inbox, args))
            record_load(report, target, f"baseline {args.rounds + 1}", baselines[-1])

            oversized = [oversize_phase(app, inbox, args, report, rss, shape) for shape in args.shapes]
            time.sleep(2)
            report.add(BENCH, target, "RSS after", rss.now_mb(), "MB", f"server fds {open_fds(pid)}")

        for phase in baselines + attacks + oversized:
            acked += phase.res.acked
        alive = app.server.proc.poll() is None
        wait_stored(app, inbox, len(set(acked)), timeout=30)
        missing = len(set(acked) - app.stored_message_ids(inbox))
        report.add(BENCH, target, "acked but missing", missing, "msgs", f"of {len(acked)} acked")
        base_rate = mean([p.res.rate for p in baselines])
        ratio = mean([p.res.rate for p in attacks]) / base_rate if base_rate else math.nan
        report.add(
            BENCH, target, "slowloris / baseline msg/s", ratio, "x", f"baseline mean {base_rate:.0f} msg/s"
        )
        # CPU per legitimate message is what a busy shared machine distorts least.
        cpu_ratio = mean([p.cpu_ms_per_msg for p in baselines]) / mean([p.cpu_ms_per_msg for p in attacks])
        report.add(BENCH, target, "baseline / slowloris CPU per msg", cpu_ratio, "x")
        report.check(BENCH, f"{target}: legit msg/s under slowloris / without >= 0.8", ratio, ratio >= 0.8)
        report.check(BENCH, f"{target}: 0 acked-but-missing, server alive", missing, missing == 0 and alive)


def run(args: argparse.Namespace, report: Report) -> None:
    header(
        f"SMTP abuse: {args.connections} slowloris conns, {args.oversize} x 10x-limit messages, "
        f"legit {args.messages} x 4 KB / {args.sessions} sessions"
    )
    for backend in backends(args.backend):
        run_backend(backend, args, report)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=1500, help="legitimate messages per phase")
    p.add_argument("--sessions", type=int, default=20)
    p.add_argument("--connections", type=int, default=1000, help="slowloris connections")
    p.add_argument("--ramp", type=float, default=5.0, help="seconds over which the attack connects")
    p.add_argument("--oversize", type=int, default=3, help="oversized messages per shape")
    p.add_argument("--shapes", nargs="*", default=["lines", "noline"], choices=["lines", "noline"])
    p.add_argument(
        "--size-limit", type=int, default=10 * MB, help="the server's AGENTMX_SMTP_MAX_MESSAGE_SIZE"
    )
    p.add_argument(
        "--rss-bound-mb", type=float, default=64.0, help="allowed RSS growth while pushing oversize"
    )
    p.add_argument("--deadline", type=float, default=180.0, help="seconds per legitimate phase at most")
    p.add_argument("--rounds", type=int, default=2, help="slowloris phases, each between two baselines")
    p.add_argument(
        "--max-connections", type=int, default=0, help="AGENTMX_SMTP_MAX_CONNECTIONS (0: the default, 2000)"
    )
    add_common_args(p)
    return p


if __name__ == "__main__":
    run_script(parser, run)
