"""A short-lived, in-process cache of authenticated keys: most requests skip the key lookup.

Changes made through this process (key update or delete, inbox delete) clear it at once; changes
made by another process sharing the database are seen within ``ttl`` seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

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

    def get(self, secret_hash: str) -> CachedKey | None:
        entry = self._entries.get(secret_hash)
        if entry is None or time.monotonic() - entry.fetched > self.ttl:
            return None
        return entry

    def put(self, secret_hash: str, entry: CachedKey) -> None:
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        self._entries[secret_hash] = entry

    def clear(self) -> None:
        self._entries.clear()
