"""SMTP load generators: an asyncio one on aiosmtplib (records every 250) and Postfix smtp-source."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiosmtplib
from common import make_message, postfix_tool


@dataclass
class LoadResult:
    sent: int = 0
    acked: list[str] = field(default_factory=list)  # Message-IDs that got a 250
    errors: int = 0
    data_latency: list[float] = field(default_factory=list)  # end of DATA -> 250, seconds
    elapsed: float = 0.0
    error_samples: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return len(self.acked) / self.elapsed if self.elapsed else 0.0


async def send_one(
    port: int,
    rcpt: str,
    n: int,
    size: int,
    result: LoadResult,
    timeout: float = 30.0,
    tls: ssl.SSLContext | None = None,
) -> bool:
    """One SMTP transaction on its own connection (like smtp-source without -d); over STARTTLS with ``tls``."""
    message_id, data = make_message(n, size, to=rcpt)
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1", port=port, timeout=timeout, start_tls=False, local_hostname="bench.example"
    )
    result.sent += 1
    try:
        await client.connect()
        await client.ehlo()
        if tls is not None:
            await client.starttls(tls_context=tls)
            await client.ehlo()
        await client.mail("load@bench.example")
        await client.rcpt(rcpt)
        t0 = time.perf_counter()
        await client.data(data)
        result.data_latency.append(time.perf_counter() - t0)
        result.acked.append(message_id)
        with contextlib.suppress(Exception):
            await client.quit()
        return True
    except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
        result.errors += 1
        if len(result.error_samples) < 5:
            result.error_samples.append(f"{type(exc).__name__}: {exc}"[:200])
        client.close()
        return False


async def aiosmtplib_load(
    port: int,
    rcpt: str,
    messages: int,
    sessions: int = 20,
    size: int = 4096,
    deadline: float = 120.0,
    stop: Callable[[], bool] | None = None,
    timeout: float = 30.0,
    tls: ssl.SSLContext | None = None,
) -> LoadResult:
    """``sessions`` concurrent clients share ``messages`` transactions; bounded by ``deadline`` seconds."""
    result = LoadResult()
    counter = iter(range(messages))
    end = time.monotonic() + deadline

    async def worker() -> None:
        for n in counter:
            if time.monotonic() > end or (stop and stop()):
                return
            if not await send_one(port, rcpt, n, size, result, timeout, tls):
                await asyncio.sleep(0.05)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(sessions)))
    result.elapsed = time.perf_counter() - t0
    return result


def smtp_source_load(
    port: int, rcpt: str, messages: int, sessions: int = 20, size: int = 4096, timeout: float = 180.0
) -> LoadResult | None:
    """Postfix's C load generator, one connection per message; None when postfix is not installed."""
    tool = postfix_tool("smtp-source")
    if tool is None:
        return None
    cmd = [tool, "-s", str(sessions), "-m", str(messages), "-l", str(size)]
    cmd += ["-f", "load@bench.example", "-t", rcpt, f"127.0.0.1:{port}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    result = LoadResult(sent=messages, elapsed=time.perf_counter() - t0)
    # smtp-source prints nothing on success; each failed transaction logs a line on stderr.
    failures = [line for line in proc.stderr.splitlines() if line.strip()]
    result.errors = len(failures) + (1 if proc.returncode else 0)
    result.error_samples = failures[:5]
    result.acked = ["?"] * max(0, messages - len(failures))
    return result
