"""The composition root's product: everything a service or job needs, built once per process."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from agentmx.blobs import BlobStore
from agentmx.db.engine import Database
from agentmx.db.listen import Listener
from agentmx.services import ingest_cache
from agentmx.services.ingest_cache import IngestCache
from agentmx.services.key_cache import KeyCache
from agentmx.settings import Settings


class Signal:
    """Wakes every waiter when set; used to poke the job runner and event streams after a commit."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        event = self._event
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass


@dataclass
class Runtime:
    settings: Settings
    db: Database
    blobs: BlobStore
    secret: bytes = b""
    jobs_signal: Signal = field(default_factory=Signal)
    events_signal: Signal = field(default_factory=Signal)
    key_cache: KeyCache = field(default_factory=KeyCache)
    ingest_cache: IngestCache = field(default_factory=IngestCache)
    # Per-key request limiter (services.ratelimit.RateLimiter) when rate_limit_per_minute > 0.
    rate_limiter: Any = None
    # PostgreSQL: the process's one LISTEN connection (db/listen.py); None on SQLite.
    listener: Listener | None = None
    # Set when the process begins to stop (SIGTERM, SIGINT): long waits inside requests end early,
    # so the server's graceful stop is not held up by them.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def clear_caches(self) -> None:
        """Forget every cached key and ingest lookup (another process changed what they hold)."""
        self.key_cache.clear()
        ingest_cache.clear_all()
