"""A response that streams a file opened beforehand, a chunk at a time as the client reads.

A body handed over whole stays in memory, with a copy in the transport's buffer, for as long as the
client takes to read it: 50 clients that stopped reading a 9 MB download held 400 MB. Chunk by chunk,
uvicorn's flow control (writes paused over 64 KiB until the socket drains) holds a chunk or two per
reader. Starlette's FileResponse opens its path only once it sends, after the headers were decided: a
file deleted meanwhile (the blob collector) cut a response short of its Content-Length.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import BinaryIO

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from agentmx.http.head import is_head

CHUNK_BYTES = 64 * 1024


class OpenFileResponse(Response):
    """200 with ``size`` bytes of ``file``, which it closes when done (HEAD: headers only)."""

    def __init__(self, file: BinaryIO, size: int, headers: Mapping[str, str]) -> None:
        self.file = file
        self.size = size
        self.status_code = 200
        self.background = None
        self.init_headers({**headers, "Content-Length": str(size)})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send(
                {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
            )
            if is_head(scope) or not self.size:
                await send({"type": "http.response.body", "body": b""})
                return
            await self._send_chunks(receive, send)
        finally:
            self.file.close()

    async def _send_chunks(self, receive: Receive, send: Send) -> None:
        # uvicorn drops writes once the client is gone without telling the sender: without this
        # watch, a closed connection would still have its whole file read.
        gone = asyncio.Event()
        watch = asyncio.create_task(_until_disconnect(receive, gone))
        try:
            left = self.size
            while left and not gone.is_set():
                chunk = await asyncio.to_thread(self.file.read, min(CHUNK_BYTES, left))
                if not chunk:  # never for a blob (files are whole before they are named); no quiet truncation
                    raise RuntimeError(f"file ended {left} bytes short of its size")
                left -= len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": bool(left)})
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch


async def _until_disconnect(receive: Receive, gone: asyncio.Event) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    gone.set()
