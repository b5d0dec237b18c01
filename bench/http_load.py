"""HTTP load generators: wrk (C, preferred) and a small keep-alive asyncio client (fallback, and for
sequential latency probes)."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from common import percentile


@dataclass
class HttpResult:
    requests: int = 0
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    non_2xx: int = 0
    tool: str = ""

    @property
    def rate(self) -> float:
        return self.requests / self.elapsed if self.elapsed else 0.0


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([0-9.]+)(us|ms|s)", text.strip())
    return float(match.group(1)) * _UNITS[match.group(2)] if match else float("nan")


def wrk(
    url: str, headers: dict[str, str], connections: int, seconds: float, threads: int = 2
) -> HttpResult | None:
    """Closed-loop load with wrk; None when wrk is not installed (apt-get install wrk)."""
    tool = shutil.which("wrk")
    if tool is None:
        return None
    cmd = [tool, "-t", str(threads), "-c", str(connections), "-d", f"{max(1, int(seconds))}s", "--latency"]
    for name, value in headers.items():
        cmd += ["-H", f"{name}: {value}"]
    res = HttpResult(tool="wrk")
    try:
        out = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=seconds + 30).stdout
    except (
        subprocess.TimeoutExpired
    ):  # wrk waits on connects a server that is out of descriptors never accepts
        res.elapsed = seconds
        return res
    if m := re.search(r"(\d+) requests in ([0-9.]+)(ms|s)", out):
        res.requests = int(m.group(1))
        res.elapsed = float(m.group(2)) / (1000 if m.group(3) == "ms" else 1)
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        res.non_2xx = int(m.group(1))
    if m := re.search(r"^\s+50%\s+(\S+)", out, re.M):
        res.p50_ms = _ms(m.group(1))
    if m := re.search(r"^\s+99%\s+(\S+)", out, re.M):
        res.p99_ms = _ms(m.group(1))
    return res


async def _one_connection(
    host: str, port: int, request: bytes, end: float, res: HttpResult, max_requests: int | None
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < end and (max_requests is None or res.requests < max_requests):
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            res.latencies.append(time.perf_counter() - t0)
            res.requests += 1
            if not 200 <= status < 400:
                res.non_2xx += 1
    finally:
        writer.close()


async def pyload(
    url: str,
    headers: dict[str, str],
    connections: int,
    seconds: float,
    max_requests: int | None = None,
) -> HttpResult:
    """Keep-alive GET load from asyncio (heavier on the CPU than wrk; records every latency)."""
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"GET {path} HTTP/1.1", f"Host: {parts.netloc}", *(f"{k}: {v}" for k, v in headers.items())]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    res = HttpResult(tool="asyncio")
    t0 = time.perf_counter()
    end = t0 + seconds
    await asyncio.gather(
        *(
            _one_connection(parts.hostname or "127.0.0.1", parts.port or 80, request, end, res, max_requests)
            for _ in range(connections)
        )
    )
    res.elapsed = time.perf_counter() - t0
    return res


def load(
    url: str, headers: dict[str, str], connections: int, seconds: float, prefer_wrk: bool = True
) -> HttpResult:
    if prefer_wrk and (res := wrk(url, headers, connections, seconds)) is not None:
        return res
    res = asyncio.run(pyload(url, headers, connections, seconds))
    res.p50_ms = percentile(res.latencies, 50) * 1000
    res.p99_ms = percentile(res.latencies, 99) * 1000
    return res
