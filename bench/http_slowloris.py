"""B7b: REST reads under an HTTP slowloris, guarded (http/guard.py) and unguarded, as a ratio in one run.

Per backend and per mode, one agentmx server:
  * guarded: AGENTMX_HTTP_MAX_CONNECTIONS = --max-connections (below the attack) and
    AGENTMX_HTTP_HEADER_TIMEOUT = --header-timeout;
  * unguarded: no header deadline and no effective cap (what uvicorn alone does).
In each: wrk GET message at --load-connections without attack, then again while
bench/http_attacker.py holds --connections connections dribbling header bytes (and reconnects
0.5 s after each close); with ``--attack body`` they send complete POST heads and dribble the
bodies instead (AGENTMX_HTTP_BODY_MIN_RATE, guarded, at its default). The server's RLIMIT_NOFILE is lowered to --server-fd-limit once it runs,
below the attack: the resource a slowloris exhausts, after which SMTP, HTTP and the database all
fail to open sockets and files. Reported: the legitimate req/s ratio, the server's open file
descriptors at their peak, the server's CPU per legitimate request with and without the attack, the
attacker's CPU (it shares the machine's cores with the server and wrk), and how many attack
connections a second the server ended: reset as it accepted them (the guard turning newcomers away;
the attacker sees it as a reset during connect), or closed after connecting.

Goals (as for SMTP, PERFORMANCE-RELIABILITY.md section 4): legitimate req/s under attack >= 0.8 x
without; guarded, the server's descriptors stay under its connection cap plus the 512 reserve.

    python bench/http_slowloris.py --connections 4000 --max-connections 1000 --backend both
"""

from __future__ import annotations

import argparse
import os
import resource
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from common import (
    BENCH_DIR,
    PY,
    Report,
    add_common_args,
    agentmx_server,
    backends,
    cpu_seconds,
    header,
    run_script,
)
from http_load import HttpResult, load
from rest_read import seed
from smtp_abuse import Attacker, fd_limit, open_fds

RESERVE = 512  # agentmx.fd_budget.RESERVE


@contextmanager
def fd_peak(pid: int) -> Iterator[list[int]]:
    """The server's open descriptors, sampled every 0.2 s; the list holds the peak so far."""
    peak = [open_fds(pid)]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.2):
            peak[0] = max(peak[0], open_fds(pid))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join()


def run_mode(backend: str, mode: str, args: argparse.Namespace, report: Report) -> None:
    bench = "http_slowloris" if args.attack == "headers" else "http_body_slowloris"
    env = (
        {"AGENTMX_HTTP_MAX_CONNECTIONS": str(args.max_connections), "AGENTMX_HTTP_HEADER_TIMEOUT": str(args.header_timeout)}
        if mode == "guarded"
        else {"AGENTMX_HTTP_MAX_CONNECTIONS": "100000", "AGENTMX_HTTP_HEADER_TIMEOUT": "0", "AGENTMX_HTTP_BODY_MIN_RATE": "0"}
    )  # fmt: skip
    with agentmx_server(backend, env) as app:
        target = f"{app.label} {mode}"
        assert app.server.proc is not None
        pid = app.server.proc.pid
        # A limit below the attack, so what uvicorn alone does when descriptors run out shows here.
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (args.server_fd_limit, args.server_fd_limit))
        path = seed(app, 20)["GET message"]
        url, auth = app.server.base_url + path, {"Authorization": f"Bearer {app.api_key}"}
        load(url, auth, args.load_connections, 1)  # warm-up
        cpu0 = cpu_seconds(pid)
        quiet = load(url, auth, args.load_connections, args.seconds)
        quiet_cpu = cpu_seconds(pid) - cpu0
        report.add(bench, target, "req/s, no attack", quiet.rate, "req/s", f"p99 {quiet.p99_ms:.1f} ms")
        cmd = [PY, str(BENCH_DIR / "http_attacker.py"), "--port", str(app.server.http_port)]
        cmd += ["--connections", str(args.connections), "--ramp", str(args.ramp)]
        if args.attack == "body":
            cmd += ["--body-path", "/v0/inboxes", "--api-key", app.api_key]
        attacker = Attacker(cmd)
        try:
            with fd_peak(pid) as peak:
                attacker.wait_for(lambda s: s["opened"] >= args.connections, args.ramp + 30)
                before = dict(attacker.status)
                cpu0, attack_cpu0 = cpu_seconds(pid), cpu_seconds(attacker.proc.pid)
                attacked = load(url, auth, args.load_connections, args.seconds)
                server_cpu, attack_cpu = cpu_seconds(pid) - cpu0, cpu_seconds(attacker.proc.pid) - attack_cpu0
                attacker.wait_for(
                    lambda s: s["time"] > before["time"], 5
                )  # a status line from after the load
                after = dict(attacker.status)
        finally:
            attacker.stop()
        note = f"p99 {attacked.p99_ms:.1f} ms" + (f", {attacked.non_2xx} non-2xx" if attacked.non_2xx else "")
        report.add(bench, target, "req/s, under attack", attacked.rate, "req/s", note)
        ratio = attacked.rate / quiet.rate if quiet.rate else float("nan")
        report.add(bench, target, "under attack / no attack", ratio, "x")
        per_request = "server CPU per legitimate request"
        report.add(bench, target, f"{per_request}, no attack", per_ms(quiet_cpu, quiet), "ms")
        report.add(bench, target, f"{per_request}, under attack", per_ms(server_cpu, attacked), "ms")
        cores = f"{args.seconds:g} s x {os.cpu_count()} cores = {args.seconds * (os.cpu_count() or 1):g} s"
        report.add(bench, target, "server CPU, attacked load", server_cpu, "s", f"of {cores}")
        report.add(
            bench, target, "attacker CPU, attacked load", attack_cpu, "s",
            f"bench/http_attacker.py, on the server's {os.cpu_count()} cores (wrk's not counted)",
        )  # fmt: skip
        report.add(bench, target, "server open fds, peak", peak[0], "fds", f"RLIMIT_NOFILE {fd_limit(pid)}")
        report.add(
            bench, target, "attack conns open, end of load", after.get("held", 0), "conns",
            f"peak {after.get('peak_held', 0)}; as the attacker counts: includes connects not yet accepted",
        )  # fmt: skip
        closures(report, bench, target, before, after)
        if mode == "guarded":  # unguarded is the baseline: what the guard is measured against
            report.check(
                bench, f"{target} req/s under {args.connections} slowloris >= 0.8x", ratio, ratio >= 0.8
            )
            bound = args.max_connections + RESERVE
            report.check(bench, f"{target} open fds <= cap + {RESERVE} ({bound})", peak[0], peak[0] <= bound)


def per_ms(cpu: float, result: HttpResult) -> float:
    return cpu / result.requests * 1000 if result.requests else float("nan")


def closures(report: Report, bench: str, target: str, before: dict[str, Any], after: dict[str, Any]) -> None:
    """The attack connections the server ended, a second, between two of the attacker's status lines
    around the attacked load."""
    seconds = after.get("time", 0.0) - before.get("time", 0.0)

    def rate(key: str) -> float:
        return (after.get(key, 0) - before.get(key, 0)) / seconds if seconds > 0 else float("nan")

    at_connect = rate("reset_at_connect")
    report.add(
        bench, target, "attack conns the server ended", rate("closed_by_server"), "conns/s",
        f"{at_connect:.0f}/s reset at connect (turned away at accept), the rest after connecting; "
        f"{rate('connect_errors'):.0f}/s other connect errors; over {seconds:.1f} s",
    )  # fmt: skip


def run(args: argparse.Namespace, report: Report) -> None:
    header(
        f"HTTP slowloris ({args.attack}): {args.connections} attack conns, {args.load_connections} legitimate, "
        f"cap {args.max_connections}, header timeout {args.header_timeout}s"
    )
    for backend in backends(args.backend):
        for mode in ("guarded", "unguarded"):
            run_mode(backend, mode, args, report)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--connections", type=int, default=4000, help="attack connections")
    p.add_argument("--max-connections", type=int, default=1000, help="AGENTMX_HTTP_MAX_CONNECTIONS, guarded")
    p.add_argument("--header-timeout", type=float, default=10.0, help="AGENTMX_HTTP_HEADER_TIMEOUT, guarded")
    p.add_argument(
        "--server-fd-limit", type=int, default=3000, help="the server's RLIMIT_NOFILE, set once it runs"
    )
    p.add_argument(
        "--attack", choices=["headers", "body"], default="headers", help="dribble request heads or bodies"
    )
    p.add_argument("--load-connections", type=int, default=16)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--ramp", type=float, default=4.0, help="seconds over which the attack connects")
    add_common_args(p)
    return p


if __name__ == "__main__":
    run_script(parser, run)
