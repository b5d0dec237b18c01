"""Per-API-key rate limiting: a token bucket per key, kept in this process's memory.

Each server process limits on its own, so N processes allow up to N times the rate; that is
enough to stop a runaway agent loop, which is what the limit is for.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from agentmx.errors import RateLimited
from agentmx.services.caller import Caller

MAX_TRACKED_KEYS = 100_000


class RateLimiter:
    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0  # tokens per second
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key id -> (tokens, last refill)

    def check(self, caller: Caller) -> None:
        """Take one token for this key, or raise RateLimited with the seconds until the next one."""
        if caller.api_key_id is not None:
            self.take(caller.api_key_id, "This API key")

    def take(self, key: str, holder: str) -> None:
        """Take one token from ``key``'s bucket; ``holder`` names the credential in the error's fix."""
        now = self.clock()
        tokens, last = self._buckets.get(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            retry_after = max(1, math.ceil((1.0 - tokens) / self.rate))
            raise RateLimited(
                "Rate limit exceeded",
                retry_after=retry_after,
                fix=f"{holder} may make {int(self.capacity)} requests a minute. Retry after {retry_after} s.",
            )
        if len(self._buckets) >= MAX_TRACKED_KEYS and key not in self._buckets:
            self._buckets.clear()  # bounded memory; forgetting buckets only ever lets requests through
        self._buckets[key] = (tokens - 1.0, now)
