"""Who is calling: an API key's secret to its Caller, for every edge (HTTP, WebSocket, SMTP submission).

Keys are cached per process (``key_cache``); ``used_at`` is written at most once a minute per key,
and the per-key rate limit (when configured) is charged here.
"""

from __future__ import annotations

import time

from agentmx.db.types import utcnow
from agentmx.services import keys
from agentmx.services.caller import Caller
from agentmx.services.key_cache import CachedKey
from agentmx.services.runtime import Runtime


async def caller_for_secret(rt: Runtime, secret: str, *, rate_limited: bool = True) -> Caller:
    """The caller a secret (``am_…``) stands for; Unauthorized if unknown or expired.

    ``rate_limited=False``: a check of a key already in use (an open event stream), not a request.
    """
    secret_hash = keys.hash_secret(secret)

    async def lookup() -> CachedKey:
        async with rt.db.read() as session:
            key = await keys.find_key(session, secret)
        return CachedKey(keys.caller_for(key), key.expires_at, key.used_at, time.monotonic())

    cached = await rt.key_cache.get_or_load(secret_hash, lookup)
    if cached.expires_at is not None and cached.expires_at <= utcnow():
        raise keys.unknown_key()
    if keys.used_at_is_stale(cached.used_at):
        # Claimed before the write: requests arriving while it waits for the lock or the disk
        # must not queue a write each (64 connections meant 64 serialised commits).
        previous, cached.used_at = cached.used_at, utcnow()
        try:
            async with rt.db.transaction() as session:
                await keys.touch_key(session, cached.caller.api_key_id or "")
        except BaseException:
            cached.used_at = previous
            raise
    caller = cached.caller
    limiter = getattr(rt, "rate_limiter", None)
    if limiter is not None and rate_limited:
        limiter.check(caller)
    return caller
