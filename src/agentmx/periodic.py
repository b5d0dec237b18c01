"""A callback run every few seconds on the event loop, for sweepers of connections past a deadline."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable


def run_every(interval: float, tick: Callable[[float], None]) -> Callable[[], Awaitable[None]]:
    """Call ``tick(loop.time())`` every ``interval`` seconds; returns the coroutine function that stops it."""
    loop = asyncio.get_running_loop()

    async def forever() -> None:
        while True:
            await asyncio.sleep(interval)
            tick(loop.time())

    task = loop.create_task(forever())

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return stop
