"""A short-lived, in-process cache of authenticated keys: most requests skip the key lookup.

Changes made through this process (key update or delete, inbox delete) clear it at once; those
made by another process sharing the database clear it when their NOTIFY arrives (``cache_notify``),
or are seen within ``ttl`` seconds if it never does. Concurrent misses
for one key share a single lookup: when an entry expired under 64 busy connections, each of them
ran its own lookup (PostgreSQL: a p99 of 100-200 ms in the first seconds of bench/rest_read.py).

Refresh ahead: an entry past half its ``ttl`` is still answered, and one background reload per key
replaces it, so a busy key's requests never wait on its lookup; a reload that finds the key gone
(deleted or expired) drops the entry, and the next request is refused. A reload the database did
not answer (a restart, a dropped connection) keeps the entry until its ``ttl``: a blip costs the
key's requests nothing it did not have to. No entry older than ``ttl`` is ever answered, so the
bound above holds as before.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from agentmx.errors import AgentMXError, TemporaryFailure
from agentmx.services.caller import Caller

DEFAULT_TTL = 2.0
MAX_ENTRIES = 10_000


@dataclass
class CachedKey:
    caller: Caller
    expires_at: datetime | None
    used_at: datetime | None
    fetched: float


class KeyCache:
    def __init__(self, ttl: float = DEFAULT_TTL) -> None:
        self.ttl = ttl
        self._entries: dict[str, CachedKey] = {}
        self._loading: dict[str, asyncio.Future[CachedKey]] = {}
        self._lookups: set[asyncio.Task[CachedKey]] = set()  # held: the loop keeps only weak references
        self._generation = 0  # bumped by clear(): a lookup begun before it must not fill the cache

    def get(self, secret_hash: str) -> CachedKey | None:
        entry = self._entries.get(secret_hash)
        if entry is None or time.monotonic() - entry.fetched > self.ttl:
            return None
        return entry

    def put(self, secret_hash: str, entry: CachedKey) -> None:
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        self._entries[secret_hash] = entry

    async def get_or_load(self, secret_hash: str, load: Callable[[], Awaitable[CachedKey]]) -> CachedKey:
        """The cached entry, or the result of ``load`` run once for all concurrent callers."""
        entry = self._entries.get(secret_hash)
        if entry is not None:
            age = time.monotonic() - entry.fetched
            if age <= self.ttl:
                if age > self.ttl / 2 and secret_hash not in self._loading:
                    self._start_lookup(secret_hash, load)
                return entry
        pending = self._loading.get(secret_hash) or self._start_lookup(secret_hash, load)
        # A task of its own, shielded: the request that began it going away (a dropped SMTP session
        # during AUTH) must not cancel the lookup the others wait on.
        return await asyncio.shield(pending)

    def _begin(self, secret_hash: str) -> tuple[asyncio.Future[CachedKey], int]:
        """Registered before any await: the next request sees the load in flight and the clear() after it."""
        future: asyncio.Future[CachedKey] = asyncio.get_running_loop().create_future()
        self._loading[secret_hash] = future
        return future, self._generation

    def _start_lookup(
        self, secret_hash: str, load: Callable[[], Awaitable[CachedKey]]
    ) -> asyncio.Future[CachedKey]:
        """The lookup of ``secret_hash`` begun in a task; the future its waiters await."""
        begun = self._begin(secret_hash)
        task = asyncio.get_running_loop().create_task(self._load(secret_hash, load, begun))
        self._lookups.add(task)

        def done(task: asyncio.Task[CachedKey]) -> None:
            self._lookups.discard(task)
            if not task.cancelled():
                task.exception()  # retrieved: its failure already dropped the entry
            future = begun[0]
            if not future.done():  # cancelled before it ran: no waiter may wait on it for ever
                future.cancel()
                if self._loading.get(secret_hash) is future:
                    del self._loading[secret_hash]

        task.add_done_callback(done)
        return begun[0]

    async def _load(
        self,
        secret_hash: str,
        load: Callable[[], Awaitable[CachedKey]],
        begun: tuple[asyncio.Future[CachedKey], int],
    ) -> CachedKey:
        future, generation = begun
        try:
            entry = await load()
        except BaseException as exc:
            if generation == self._generation and _refused(exc):
                self._entries.pop(secret_hash, None)  # a key no longer found is no longer answered
            future.set_exception(exc)  # waiters get the same answer (a 401 for an unknown key)
            future.exception()  # retrieved: no "never retrieved" warning when nobody waited
            raise
        finally:
            if self._loading.get(secret_hash) is future:  # clear() may have let a newer one in
                del self._loading[secret_hash]
        if generation == self._generation:
            self.put(secret_hash, entry)
        future.set_result(entry)
        return entry

    def clear(self) -> None:
        self._entries.clear()
        # Lookups in flight may have read the key before the change: later requests start their own
        # (those already waiting keep theirs, which the change did not precede).
        self._loading.clear()
        self._generation += 1


def _refused(exc: BaseException) -> bool:
    """The lookup's answer was a refusal (an unknown or expired key), not a failure to answer."""
    return isinstance(exc, AgentMXError) and not isinstance(exc, TemporaryFailure)
