"""Where a webhook's deliveries go, kept for a few seconds: the URL checked (``ssrf.check_destination``:
syntax, DNS lookup, address rules) and pinned to the checked address (``ssrf.pinned``).

A steady stream of deliveries to one URL repeated that work for every POST: a lookup in a thread for
a host name, and two URL parses. Kept here is the checked address itself, and requests connect to it,
so DNS rebinding gains nothing: a later answer is used only once it has been checked. Failures are not
kept (the next delivery checks again), and neither is anything checked at webhook create or update.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from agentmx.events.ssrf import check_destination, pinned

TTL = 5.0  # seconds an answer is used; a receiver moved to another address is reached after this
MAX_KEPT = 1024  # destinations kept at most (all forgotten at once past it: it is a cache)


@dataclass(frozen=True)
class Destination:
    url: str  # the URL with the checked address as its host
    host: dict[str, str]  # the Host header naming the original host
    server_name: str  # the TLS server name


_kept: dict[tuple[str, bool], tuple[float, Destination]] = {}


async def destination(url: str, allow_private: bool) -> Destination:
    """``url``'s checked and pinned destination; raises as ``check_destination`` does."""
    key = (url, allow_private)
    now = time.monotonic()
    kept = _kept.get(key)
    if kept is not None and now - kept[0] < TTL:
        return kept[1]
    ip = await check_destination(url, allow_private)
    pinned_url, host, extensions = pinned(url, ip)
    found = Destination(pinned_url, host, extensions["sni_hostname"])
    if len(_kept) >= MAX_KEPT:
        _kept.clear()
    _kept[key] = (now, found)  # from before the lookup: never kept longer than TTL past the answer
    return found
