"""A minimal keep-alive HTTP receiver on loopback that records every POST (arrival time, headers, body)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

# How a receiver's connection ends: the sender closed or reset it, sent junk, or the bench stopped.
CONNECTION_ENDED = (
    asyncio.IncompleteReadError,
    ConnectionError,
    asyncio.LimitOverrunError,
    asyncio.CancelledError,
)


@dataclass
class Delivery:
    at: float
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    deliveries: list[Delivery] = field(default_factory=list)
    status: int = 200
    server: asyncio.Server | None = None
    port: int = 0

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0, backlog=512)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self.server:
            self.server.close()

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.deliveries.append(Delivery(time.perf_counter(), headers, body))
                writer.write(f"HTTP/1.1 {self.status} X\r\ncontent-length: 0\r\n\r\n".encode())
                await writer.drain()
        except CONNECTION_ENDED:
            pass
        finally:
            writer.close()
