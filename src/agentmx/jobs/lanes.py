"""Lanes: a cap on the job slots one receiver may hold, so one that hangs cannot starve the others.

A job kind may name a payload key as its lane (``deliver_webhook``: the webhook id, one endpoint).
At most ``share`` jobs of one lane run at once in a process; more of its claimed jobs wait here,
claimed but holding no slot, and the runner claims none of its jobs while it holds ``claims`` of
them (``full``: excluded in the claim's SQL, so they stay pending, due, untouched: no attempt
spent, no write, no polling). The cap is per process: each process that shares a PostgreSQL
database keeps the rest of its own slots for other lanes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

from agentmx.jobs.registry import LANE_KEYS


def lane_of(kind: str, payload: Any) -> str | None:
    """The job's lane: the value of its kind's lane key (as the claim SQL reads it), or None."""
    key = LANE_KEYS.get(kind)
    if key is None or not isinstance(payload, dict):
        return None
    value = payload.get(key)
    return value if isinstance(value, str) else None


class Lanes:
    def __init__(self, share: int, claims: int, on_room: Callable[[], None]) -> None:
        self.share = share  # jobs of one lane running at once
        self.claims = claims  # claims of one lane held before its jobs are no longer claimed
        self.on_room = on_room  # called when a full lane may be claimed from again
        self.running: dict[str, int] = {}
        self.claimed: dict[str, int] = {}
        self.waiting: dict[str, deque[asyncio.Future[None]]] = {}
        self.parked = 0  # claimed jobs waiting for their lane (they hold no slot)

    def full(self) -> list[str]:
        """Lanes whose jobs the next claim must leave alone."""
        return [lane for lane, n in self.claimed.items() if n >= self.claims]

    def claim(self, lane: str | None) -> None:
        if lane is not None:
            self.claimed[lane] = self.claimed.get(lane, 0) + 1

    def unclaim(self, lane: str | None) -> None:
        if lane is None:
            return
        if _decrement(self.claimed, lane) == self.claims - 1:
            self.on_room()

    @contextlib.asynccontextmanager
    async def slot(self, lane: str | None) -> AsyncIterator[None]:
        """Held while the job runs: waits (parked) while its lane already runs ``share`` jobs."""
        if lane is None:
            yield
            return
        if self.running.get(lane, 0) >= self.share:
            turn = asyncio.get_running_loop().create_future()
            self.waiting.setdefault(lane, deque()).append(turn)
            self.parked += 1
            try:
                await turn  # handed the slot of a job of this lane that ended (see _leave)
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled():
                    self._leave(lane)  # handed the slot just as it was cancelled: pass it on
                else:
                    self._forget(lane, turn)
                raise
            finally:
                self.parked -= 1
        else:
            self.running[lane] = self.running.get(lane, 0) + 1
        try:
            yield
        finally:
            self._leave(lane)

    def _leave(self, lane: str) -> None:
        """A running job of ``lane`` ends: its slot goes to the lane's first waiter, if any."""
        queue = self.waiting.get(lane)
        while queue:
            turn = queue.popleft()
            if not queue:
                del self.waiting[lane]
            if not turn.done():
                turn.set_result(None)  # the running count stays: the slot changes hands
                return
        _decrement(self.running, lane)

    def _forget(self, lane: str, turn: asyncio.Future[None]) -> None:
        queue = self.waiting.get(lane)
        if queue is not None:
            with contextlib.suppress(ValueError):
                queue.remove(turn)
            if not queue:
                del self.waiting[lane]


def _decrement(counts: dict[str, int], lane: str) -> int:
    """One fewer of ``lane`` in ``counts`` (a lane at none is dropped: the dicts hold busy lanes only)."""
    n = counts[lane] - 1
    if n:
        counts[lane] = n
    else:
        del counts[lane]
    return n
