"""Lanes: caps on the job slots receivers may hold, so receivers that hang cannot starve the rest.

A job kind may name a payload key as its lane (``deliver_webhook``: the webhook id, one endpoint).
The rules, per process (each process that shares a PostgreSQL database keeps its own slots):

- Slots: the process runs at most ``slots`` jobs at once. One lane runs at most ``share`` of them,
  and all lanes together at most ``pool``. The other slots are kept for jobs in no lane (outbound
  mail, local delivery, scheduled sends), however many receivers hang. A claimed job over a cap
  waits here, claimed but holding no slot (parked).
- Stalls: a lane's job still running after ``stall`` seconds (a receiver that hangs) gives its slot
  back to the process and the pool, and its claim to the pool's claims; it still counts against its
  lane's share and claims. So receivers that hang hold their requests open without taking the slots
  of healthy ones, up to ``stalled_max`` stalled jobs in all (a bound on open requests: the runner's
  128 are 8 lanes' whole shares of 16). Past it, a job that runs past ``stall`` keeps its slot (it
  tries again every ``stall``) until it ends or a stalled one does. A lane whose whole share is
  stalled is blocked: its parked jobs are handed back (``HandedBack``: released, due, unattempted)
  and claims leave it alone until one of them ends.
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


class HandedBack(Exception):  # noqa: N818 (a signal, not an error)
    """Raised for a parked job whose lane is blocked: the runner releases its claim, unrun."""


class Ticket:
    """One claimed job of a lane, from its claim until it leaves its slot."""

    __slots__ = ("lane", "claimed", "stalled", "holds_slot", "timer")

    def __init__(self, lane: str) -> None:
        self.lane = lane
        self.claimed = True  # until its handler returns (``unclaim``)
        self.stalled = False  # ran past ``stall``: out of the pool and the process's slots
        self.holds_slot = False  # one of the process's slots
        self.timer: asyncio.TimerHandle | None = None  # until it stalls


class Lanes:
    def __init__(
        self,
        slots: int,
        share: int,
        pool: int,
        claims: int,
        pool_claims: int,
        least: int,
        stall: float,
        stalled_max: int,
        on_room: Callable[[], None],
    ) -> None:
        self.slots = asyncio.Semaphore(slots)  # jobs of the process running at once, stalled ones aside
        self.share = share  # jobs of one lane running at once
        self.pool = pool  # jobs of all lanes running at once: the other slots are kept for the rest
        self.claims = claims  # claimed jobs one lane may hold (running or parked)
        self.pool_claims = pool_claims  # claimed jobs all lanes together may hold, stalled ones aside
        self.least = least  # room a lane (or the pool) needs to be claimed from: claims stay big
        self.stall = stall  # seconds after which a running job of a lane is stalled
        self.stalled_max = stalled_max  # stalled jobs at most; more stay in the pool
        self.on_room = on_room  # called when a lane (or the pool) left alone may be claimed from again
        self.running: dict[str, int] = {}
        self.claimed: dict[str, int] = {}
        self.stalled: dict[str, int] = {}
        self.in_pool = 0  # jobs of all lanes running, stalled ones aside
        self.pool_claimed = 0  # claimed jobs of all lanes, stalled ones aside
        self.stalled_total = 0
        self.waiting: deque[tuple[Ticket, asyncio.Future[None]]] = deque()  # parked, oldest first
        self.parked = 0  # claimed jobs waiting for a slot of their lane or the pool (they hold none)

    def plan(self, free: int) -> ClaimPlan:
        """A claim of at most ``free`` jobs that takes no lane, nor the pool, over its claims."""
        pool_room = self.pool_claims - self.pool_claimed
        if pool_room < self.least:
            return ClaimPlan(free, [], all_full=True)
        size = min(free, pool_room)
        # Blocked lanes from their stalled jobs: those may all have returned (unclaimed, writing outcomes).
        full = [lane for lane in self.stalled if self._blocked(lane)]
        for lane, n in self.claimed.items():
            room = self.claims - n
            if self._blocked(lane):
                continue
            if room < self.least:
                full.append(lane)
            else:
                size = min(size, room)  # the claim might be all this lane's jobs
        return ClaimPlan(size, full, all_full=False)

    def claim(self, lane: str | None) -> Ticket | None:
        if lane is None:
            return None
        self.claimed[lane] = self.claimed.get(lane, 0) + 1
        self.pool_claimed += 1
        return Ticket(lane)

    def unclaim(self, ticket: Ticket | None) -> None:
        if ticket is None or not ticket.claimed:
            return
        ticket.claimed = False
        # Exactly at ``least`` room: it was left alone until now (``plan``).
        opened = _decrement(self.claimed, ticket.lane) == self.claims - self.least
        if not ticket.stalled:
            self.pool_claimed -= 1
            opened = opened or self.pool_claimed == self.pool_claims - self.least
        if opened:
            self.on_room()

    @contextlib.asynccontextmanager
    async def slot(self, ticket: Ticket | None) -> AsyncIterator[None]:
        """Held while the job runs: waits (parked) while its lane runs ``share`` jobs or all lanes
        ``pool``, then for a slot of the process. Raises HandedBack if its lane is or gets blocked."""
        if ticket is None:
            async with self.slots:
                yield
            return
        if self._has_room(ticket.lane):
            self._take(ticket)
        else:
            await self._park(ticket)
        try:
            await self.slots.acquire()
            ticket.holds_slot = True
            ticket.timer = asyncio.get_running_loop().call_later(self.stall, self._stall, ticket)
            yield
        finally:
            self._leave(ticket)

    async def _park(self, ticket: Ticket) -> None:
        if self._blocked(ticket.lane):
            raise HandedBack
        turn = asyncio.get_running_loop().create_future()
        self.waiting.append((ticket, turn))
        self.parked += 1
        try:
            await turn  # handed a slot (``_admit``), or HandedBack (``_stall``)
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled() and turn.exception() is None:
                self._leave(ticket)  # handed the slot just as it was cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self.waiting.remove((ticket, turn))
            raise
        finally:
            self.parked -= 1

    def _has_room(self, lane: str) -> bool:
        return self.running.get(lane, 0) < self.share and self.in_pool < self.pool

    def _blocked(self, lane: str) -> bool:
        """Its whole share stalled: nothing of it can run until one of them ends."""
        return self.stalled.get(lane, 0) >= self.share

    def _take(self, ticket: Ticket) -> None:
        self.running[ticket.lane] = self.running.get(ticket.lane, 0) + 1
        self.in_pool += 1

    def _stall(self, ticket: Ticket) -> None:
        """The job has run ``stall`` seconds: it leaves the pool, the pool's claims and the process's slots."""
        loop = asyncio.get_running_loop()
        if self.stalled_total >= self.stalled_max:
            ticket.timer = loop.call_later(self.stall, self._stall, ticket)  # try again later
            return
        ticket.timer = None
        ticket.stalled = True
        self.stalled_total += 1
        self.stalled[ticket.lane] = self.stalled.get(ticket.lane, 0) + 1
        self.in_pool -= 1
        ticket.holds_slot = False
        self.slots.release()
        if ticket.claimed:
            self.pool_claimed -= 1
        if self._blocked(ticket.lane):
            self._hand_back(ticket.lane)
        self._admit()
        self.on_room()  # the runner's claimed jobs in flight, and maybe the pool's claims, went down

    def _hand_back(self, lane: str) -> None:
        """Its parked jobs would wait for its stalled ones to end (the receiver's timeout): not claimed."""
        for waiter in [w for w in self.waiting if w[0].lane == lane]:
            self.waiting.remove(waiter)
            if not waiter[1].done():
                waiter[1].set_exception(HandedBack())

    def _leave(self, ticket: Ticket) -> None:
        """A job of a lane ends (or gives up its slot): what it held goes to the waiters."""
        lane = ticket.lane
        if ticket.timer is not None:
            ticket.timer.cancel()
            ticket.timer = None
        _decrement(self.running, lane)
        if ticket.stalled:
            self.stalled_total -= 1
            if _decrement(self.stalled, lane) == self.share - 1:
                self.on_room()  # was blocked: claims may take its jobs again
        else:
            self.in_pool -= 1
        if ticket.holds_slot:
            ticket.holds_slot = False
            self.slots.release()
        self._admit()

    def _admit(self) -> None:
        """Free slots of the pool go to the oldest waiters whose lane is under its share."""
        i = 0
        while self.in_pool < self.pool and i < len(self.waiting):
            ticket, turn = self.waiting[i]
            if turn.done():
                del self.waiting[i]
            elif self.running.get(ticket.lane, 0) < self.share:
                del self.waiting[i]
                self._take(ticket)
                turn.set_result(None)
            else:
                i += 1


def _decrement(counts: dict[str, int], lane: str) -> int:
    """One fewer of ``lane`` in ``counts`` (a lane at none is dropped: the dicts hold busy lanes only)."""
    n = counts[lane] - 1
    if n:
        counts[lane] = n
    else:
        del counts[lane]
    return n
