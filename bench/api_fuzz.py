"""API fuzz for a bounded wall time: the strategy of tests/test_robustness_api.py, randomised, for minutes.

The strategy (agentmx.testing.api_fuzz) draws requests against every operation of the served
/openapi.json. Here it runs in random batches until the time is up, never stopping at a failure:
each 5xx is recorded (one sample per operation and status) and the run goes on. At the end the
server must still answer /health and must not have exited.

Goal (PERFORMANCE-RELIABILITY.md section 4): 0 crashes (here: 0 responses >= 500, 0 server exits).

    python bench/api_fuzz.py --minutes 10 --backend both
"""

from __future__ import annotations

import argparse
import re
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
from common import Report, add_common_args, agentmx_server, backends, header, run_script
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from agentmx.testing.api_fuzz import Request, Target, describe, requests

BENCH = "api_fuzz"
BATCH = 200  # examples per Hypothesis run; the clock is checked between runs
# No relay and no resolver: fuzzed sends and domain checks fail fast instead of reaching the world.
ENV = {"AGENTMX_SMTP_RELAY": "127.0.0.1:9", "AGENTMX_DNS_RESOLVER": "127.0.0.1:9"}


@dataclass
class FuzzResult:
    examples: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    operations: Counter[str] = field(default_factory=Counter)
    failures: dict[str, str] = field(default_factory=dict)  # "METHOD template status" -> one sample
    transport_errors: int = 0


def operation_matcher(ops: list[tuple[str, str]]) -> list[tuple[str, re.Pattern[str]]]:
    """Map a filled-in request path back to its OpenAPI template (literal segments win over parameters)."""
    out = []
    for method, template in sorted(ops, key=lambda op: (op[1].count("{"), -len(op[1]))):
        pattern = re.sub(r"\\\{rest\\\}", ".*", re.escape(template))
        pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]*", pattern)
        out.append((f"{method} {template}", re.compile(f"{method} {pattern}")))
    return out


def name_of(matchers: list[tuple[str, re.Pattern[str]]], request: Request) -> str:
    line = f"{request[0]} {request[1]}"
    return next((name for name, rx in matchers if rx.fullmatch(line)), line)


def fuzz(target: Target, seconds: float, result: FuzzResult) -> None:
    matchers = operation_matcher(target.ops)
    end = time.monotonic() + seconds

    @settings(
        max_examples=BATCH,
        deadline=None,
        database=None,
        phases=[Phase.generate],  # no shrinking: a 5xx is recorded, not raised
        suppress_health_check=list(HealthCheck),
    )
    @given(data=st.data())
    def batch(data: st.DataObject) -> None:
        request = data.draw(requests(target))  # always draw: Hypothesis wants the same draws per run
        if time.monotonic() > end:
            return
        name = name_of(matchers, request)
        try:
            resp = target.send(request)
        except httpx.HTTPError as exc:
            result.transport_errors += 1
            result.failures.setdefault(f"{name} {type(exc).__name__}", repr(exc)[:300])
            return
        result.examples += 1
        result.operations[name] += 1
        result.statuses[resp.status_code] += 1
        if resp.status_code >= 500:
            result.failures.setdefault(f"{name} {resp.status_code}", describe(request, resp))

    while time.monotonic() < end:
        batch()


def run(args: argparse.Namespace, report: Report) -> None:
    for backend in backends(args.backend):
        header(f"API fuzz: {args.minutes} min on {backend}")
        with agentmx_server(backend, env=ENV) as app:
            target = Target.seeded(app.server)
            result = FuzzResult()
            t0 = time.monotonic()
            fuzz(target, args.minutes * 60, result)
            elapsed = time.monotonic() - t0
            alive = app.server.proc is not None and app.server.proc.poll() is None
            healthy = alive and target.http.get("/health").status_code == 200
            tracebacks = app.server.log_path.read_text(errors="replace").count("Traceback")
            target.close()
        label = f"agentmx-{backend}"
        report.add(BENCH, label, "examples", result.examples, "req", f"in {elapsed:.0f} s")
        report.add(BENCH, label, "operations hit", len(result.operations), "ops", f"of {len(target.ops)}")
        server_errors = sum(n for status, n in result.statuses.items() if status >= 500)
        report.add(BENCH, label, "responses >= 500", server_errors, "req")
        report.add(BENCH, label, "transport errors", result.transport_errors, "req")
        codes = ", ".join(f"{code}: {n}" for code, n in sorted(result.statuses.items()))
        report.note(f"{label} status codes: {codes}; tracebacks in the server log: {tracebacks}")
        missed = sorted({f"{m} {t}" for m, t in target.ops} - set(result.operations))
        if missed:
            report.note(f"{label} operations never drawn: {', '.join(missed)}")
        for key, sample in result.failures.items():
            report.note(f"{label} FAILURE {key}: {sample}")
        ok = server_errors == 0 and result.transport_errors == 0 and healthy
        report.check(BENCH, f"{label}: 0 responses >= 500, server healthy after", server_errors, ok)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=1.0, help="wall time per backend")
    add_common_args(p)
    return p


if __name__ == "__main__":
    run_script(parser, run)
