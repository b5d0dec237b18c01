"""Lanes: caps on the job slots receivers may hold, so receivers that hang cannot starve the rest.

A job kind may name a payload key as its lane (``deliver_webhook``: the webhook id, one endpoint).
Two rules, per process (each process that shares a PostgreSQL database keeps its own slots):

- Slots: one lane runs at most ``share`` jobs at once, and all lanes together at most ``pool``. The
  other slots are kept for jobs in no lane (outbound mail, local delivery, scheduled sends), however
  many receivers hang. A claimed job over either cap waits here, claimed but holding no slot (parked).
- Claims: one lane holds at most ``claims`` claimed jobs, all lanes together ``pool_claims``. A claim
  takes no more jobs than the room left in any lane it may take from; a lane (or the pool) with less
  than ``least`` room is left alone (``plan``: excluded in the claim's SQL, so its jobs stay pending,
  due, untouched: no attempt spent, no write, no polling) until its claimed jobs have run.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from agentmx.jobs.registry import LANE_KEYS


def lane_of(kind: str, payload: Any) -> str | None:
    """The job's lane: the value of its kind's lane key (as the claim SQL reads it), or None."""
    key = LANE_KEYS.get(kind)
    if key is None or not isinstance(payload, dict):
        return None
    value = payload.get(key)
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class ClaimPlan:
    size: int  # jobs to claim at most
    full: list[str]  # lanes whose jobs this claim leaves alone
    all_full: bool  # the pool has too little room: the claim leaves every lane's jobs alone


class Lanes:
    def __init__(
        self, share: int, pool: int, claims: int, pool_claims: int, least: int, on_room: Callable[[], None]
    ) -> None:
        self.share = share  # jobs of one lane running at once
        self.pool = pool  # jobs of all lanes running at once: the other slots are kept for the rest
        self.claims = claims  # claimed jobs one lane may hold (running or parked)
        self.pool_claims = pool_claims  # claimed jobs all lanes together may hold
        self.least = least  # room a lane (or the pool) needs to be claimed from: claims stay big
        self.on_room = on_room  # called when a lane (or the pool) left alone may be claimed from again
        self.running: dict[str, int] = {}
        self.claimed: dict[str, int] = {}
        self.in_pool = 0  # jobs of all lanes running
        self.pool_claimed = 0  # claimed jobs of all lanes
        self.waiting: deque[tuple[str, asyncio.Future[None]]] = deque()  # parked, oldest first
        self.parked = 0  # claimed jobs waiting for a slot of their lane or the pool (they hold none)

    def plan(self, free: int) -> ClaimPlan:
        """A claim of at most ``free`` jobs that takes no lane, nor the pool, over its claims."""
        pool_room = self.pool_claims - self.pool_claimed
        if pool_room < self.least:
            return ClaimPlan(free, [], all_full=True)
        size = min(free, pool_room)
        full = []
        for lane, n in self.claimed.items():
            room = self.claims - n
            if room < self.least:
                full.append(lane)
            else:
                size = min(size, room)  # the claim might be all this lane's jobs
        return ClaimPlan(size, full, all_full=False)

    def claim(self, lane: str | None) -> None:
        if lane is not None:
            self.claimed[lane] = self.claimed.get(lane, 0) + 1
            self.pool_claimed += 1

    def unclaim(self, lane: str | None) -> None:
        if lane is None:
            return
        self.pool_claimed -= 1
        # Exactly at ``least`` room: it was left alone until now (``plan``).
        opened = _decrement(self.claimed, lane) == self.claims - self.least
        if opened or self.pool_claimed == self.pool_claims - self.least:
            self.on_room()

    @contextlib.asynccontextmanager
    async def slot(self, lane: str | None) -> AsyncIterator[None]:
        """Held while the job runs: waits (parked) while its lane runs ``share`` jobs or all lanes ``pool``."""
        if lane is None:
            yield
            return
        if self.running.get(lane, 0) < self.share and self.in_pool < self.pool:
            self._take(lane)
        else:
            turn = asyncio.get_running_loop().create_future()
            self.waiting.append((lane, turn))
            self.parked += 1
            try:
                await turn  # handed the slot of a job that ended (see _leave)
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled():
                    self._leave(lane)  # handed the slot just as it was cancelled: pass it on
                else:
                    with contextlib.suppress(ValueError):
                        self.waiting.remove((lane, turn))
                raise
            finally:
                self.parked -= 1
        try:
            yield
        finally:
            self._leave(lane)

    def _take(self, lane: str) -> None:
        self.running[lane] = self.running.get(lane, 0) + 1
        self.in_pool += 1

    def _leave(self, lane: str) -> None:
        """A running job of ``lane`` ends: its slot goes to the first waiter whose lane is under its share
        (one slot of the pool came free, and one of ``lane``'s share)."""
        _decrement(self.running, lane)
        self.in_pool -= 1
        for i, (waiting_lane, turn) in enumerate(self.waiting):
            if not turn.done() and self.running.get(waiting_lane, 0) < self.share:
                del self.waiting[i]
                self._take(waiting_lane)
                turn.set_result(None)
                return


def _decrement(counts: dict[str, int], lane: str) -> int:
    """One fewer of ``lane`` in ``counts`` (a lane at none is dropped: the dicts hold busy lanes only)."""
    n = counts[lane] - 1
    if n:
        counts[lane] = n
    else:
        del counts[lane]
    return n
