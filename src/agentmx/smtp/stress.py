"""Postfix's "stress" mode for the SMTP listener: a short command timeout while connections pile up.

aiosmtpd closes a connection that has not completed a command within its timeout (300 s, the
whole DATA body counting as one command). 1,000 slowloris connections idling or dribbling a byte
at a time would each hold a slot for those 300 s. While more than half of the connection cap is
in use, this reaper closes every connection whose last command is older than the stress timeout
(Postfix: smtpd_timeout 300 s, 10 s under stress), so held slots turn over every few seconds.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from collections.abc import Set as AbstractSet
from typing import Protocol

from agentmx.periodic import run_every

log = logging.getLogger("agentmx.smtp")


class Reapable(Protocol):
    last_command_at: float

    def close_idle(self) -> None: ...


class StressReaper:
    def __init__(self, live: AbstractSet[Reapable], max_connections: int, stress_timeout: float) -> None:
        self.live = live
        self.threshold = max(1, max_connections // 2)
        self.stress_timeout = stress_timeout
        self.reaped = 0

    @property
    def under_stress(self) -> bool:
        return len(self.live) > self.threshold

    def reap(self, now: float) -> int:
        """Close the connections idle past the stress timeout, if under stress; returns how many."""
        if not self.under_stress:
            return 0
        idle = [c for c in list(self.live) if now - c.last_command_at > self.stress_timeout]
        for conn in idle:
            conn.close_idle()
        self.reaped += len(idle)
        return len(idle)

    def start(self, interval: float = 1.0) -> Callable[[], Awaitable[None]]:
        """Run reap() every ``interval`` seconds; returns the coroutine function that stops it."""

        def tick(now: float) -> None:
            if closed := self.reap(now):
                log.info("smtp under stress (%d connections): closed %d idle", len(self.live), closed)

        return run_every(interval, tick)
