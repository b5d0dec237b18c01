"""The job runner's lanes (jobs/lanes.py) under random interleavings, on a virtual clock.

A seeded driver plays the runner (``JobRunner``): it claims as its loop does (``plan``, then ``claim`` per job),
runs each claimed job in ``slot`` and ``unclaim``s it when its handler returns, and releases handed-back jobs
after a while (the runner's release commit). Between steps it adds jobs, lets handlers return, lets outcomes be
recorded, cancels jobs (the runner's stop) and moves the clock (stalls). After every step it checks the rules
of lanes.py against its own record of every job; at the end every job has ended once and every count is zero.
The clock is virtual (the loop's ``time``), so a run of thousands of steps and stalls takes about a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from dataclasses import dataclass, field

import pytest

from agentmx.jobs.lanes import HandedBack, Lanes, Ticket
from agentmx.jobs.runner import BATCH, ROOM, STALL


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock moves only when the test says: timers (stalls) fire on ``advance``."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def time(self) -> float:
        return self.now


@dataclass(frozen=True)
class Caps:
    slots: int
    share: int
    pool: int
    claims: int
    pool_claims: int
    least: int
    stalled_max: int
    batch: int


# The runner's (JobRunner.__init__, 32 slots), and a small one that reaches every cap often.
RUNNER = Caps(32, 16, 24, BATCH, 2 * BATCH, ROOM, 4 * 32, BATCH)
SMALL = Caps(6, 3, 4, 6, 12, 3, 10, 6)


@dataclass(eq=False)
class Job:
    n: int
    lane: str | None
    ticket: Ticket | None = None
    answer: asyncio.Event = field(default_factory=asyncio.Event)  # set: its handler returns
    recorded: asyncio.Event = field(default_factory=asyncio.Event)  # set: its outcome is written
    released: asyncio.Event = field(default_factory=asyncio.Event)  # set: its hand-back is committed
    task: asyncio.Task[None] | None = None
    entered: float | None = None  # when it got its slot
    in_body: bool = False  # holds its lane's share (and a process slot until it stalls)
    in_handler: bool = False
    recording: bool = False
    releasing: bool = False
    outcome: str | None = None


async def settle() -> None:
    """Let every task run to where it waits (a slot, its receiver, its outcome's write), and due timers fire."""
    for _ in range(12):
        await asyncio.sleep(0)


class Driver:
    def __init__(self, caps: Caps, seed: int, lanes: int, hanging: int) -> None:
        self.caps = caps
        self.rng = random.Random(seed)
        self.lane_names = [f"lane-{i}" for i in range(lanes)]
        self.hanging = set(self.lane_names[:hanging])  # receivers that answer only at their timeout
        self.rooms = 0  # on_room calls
        self.lanes = Lanes(
            slots=caps.slots,
            share=caps.share,
            pool=caps.pool,
            claims=caps.claims,
            pool_claims=caps.pool_claims,
            least=caps.least,
            stall=STALL,
            stalled_max=caps.stalled_max,
            on_room=self._on_room,
        )
        self.due: list[str | None] = []  # lanes of due, unclaimed jobs, oldest first
        self.jobs: list[Job] = []  # every claim
        self.ended: Counter[str] = Counter()
        self.excluded_before: tuple[bool, set[str]] = (False, set())
        self.rooms_seen = 0
        self.cap_full_at: dict[float, bool] = {}  # whether the stalled cap was full, by clock time

    def _on_room(self) -> None:
        self.rooms += 1

    @property
    def loop(self) -> VirtualClockLoop:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualClockLoop)
        return loop

    def live(self) -> list[Job]:
        return [j for j in self.jobs if j.outcome is None]

    def end(self, job: Job, outcome: str) -> None:
        assert job.outcome is None, f"job {job.n} ended twice: {job.outcome}, then {outcome}"
        job.outcome = outcome
        self.ended[outcome] += 1

    # The runner's _run / _run_in_slot / _call, with the test's events for the database's and receivers' waits.
    async def run(self, job: Job) -> None:
        lanes = self.lanes
        try:
            try:
                async with lanes.slot(job.ticket):
                    job.in_body, job.entered = True, self.loop.time()
                    job.in_handler = True
                    try:
                        await job.answer.wait()
                    finally:
                        job.in_handler = False
                        lanes.unclaim(job.ticket)
                    job.recording = True
                    await job.recorded.wait()
                    job.recording = False
                job.in_body = False
            except HandedBack:
                assert not job.in_body and job.entered is None, "handed back after it got a slot"
                assert job.lane is not None and lanes.stalled.get(job.lane, 0) >= self.caps.share, (
                    "handed back while its lane is not blocked"
                )
                job.releasing = True
                await job.released.wait()  # the release's commit: still claimed until then
                job.releasing = False
                self.due.append(job.lane)  # due again, unattempted
                self.end(job, "handed back")
                lanes.unclaim(job.ticket)
                return
            self.end(job, "finished")
            if self.rng.random() < 0.05:
                # The runner's stop cancels every task at once: one parked job may just have been handed
                # the share and pool slot this one left, before it runs.
                job = self.pick([j for j in self.live() if j.task is not None and not j.in_body])
                if job and job.task is not None:
                    job.task.cancel()
        except asyncio.CancelledError:
            job.in_body = job.in_handler = job.recording = job.releasing = False
            self.end(job, "cancelled")
            lanes.unclaim(job.ticket)  # the runner's stop: its claim goes back either way
            raise

    def active(self) -> int:
        """The runner's ``active``: its tasks, less those parked and those stalled."""
        tasks = sum(1 for j in self.jobs if j.task is not None and not j.task.done())
        return tasks - self.lanes.parked - self.lanes.stalled_total

    def blocked(self) -> set[str]:
        return {lane for lane, n in self.lanes.stalled.items() if n >= self.caps.share}

    async def claim(self) -> None:
        free = self.caps.batch - self.active()
        if free <= 0:
            return
        plan = self.lanes.plan(free)
        assert 0 <= plan.size <= free
        blocked = self.blocked()
        assert plan.all_full or blocked <= set(plan.full), f"blocked lanes {blocked} claimable: {plan}"
        if self.rng.random() < 0.3:
            # The claim's statement runs meanwhile: handlers return, requests stall.
            await self.advance(self.rng.choice([0.01, 0.5]))
        taken: list[int] = []
        for i, lane in enumerate(self.due):
            if len(taken) == plan.size:
                break
            if lane is None or (not plan.all_full and lane not in plan.full):
                taken.append(i)
        for i in reversed(taken):
            lane = self.due.pop(i)
            job = Job(len(self.jobs), lane)
            job.ticket = self.lanes.claim(lane)
            self.jobs.append(job)
            job.task = asyncio.create_task(self.run(job))

    async def advance(self, seconds: float) -> None:
        self.loop.now += seconds
        await settle()

    def pick(self, jobs: list[Job]) -> Job | None:
        return self.rng.choice(jobs) if jobs else None

    async def step(self) -> None:
        r = self.rng.random()
        if r < 0.12:
            lane = self.rng.choice([*self.lane_names, None])
            self.due.extend([lane] * self.rng.randint(1, 3 * self.caps.share))
        elif r < 0.40:
            await self.claim()
        elif r < 0.60:  # a healthy receiver (or a job in no lane) answers
            job = self.pick([j for j in self.live() if j.in_handler and j.lane not in self.hanging])
            if job:
                job.answer.set()
        elif r < 0.64:  # a hanging receiver's request times out
            job = self.pick([j for j in self.live() if j.in_handler and j.lane in self.hanging])
            if job:
                job.answer.set()
        elif r < 0.78:
            job = self.pick([j for j in self.live() if j.recording])
            if job:
                job.recorded.set()
        elif r < 0.86:
            job = self.pick([j for j in self.live() if j.releasing])
            if job:
                job.released.set()
        elif r < 0.87:  # the runner's stop cancels its tasks, in any state
            job = self.pick([j for j in self.live() if j.task is not None])
            if job and job.task is not None:
                job.task.cancel()
        else:
            await self.advance(self.rng.choice([0.05, 0.3, STALL, 2.5 * STALL]))
        await settle()
        self.check()

    def check(self) -> None:
        lanes, caps, now = self.lanes, self.caps, self.loop.time()
        live = self.live()
        tickets = [j.ticket for j in live if j.ticket is not None]
        # A job that has ended holds nothing.
        for j in self.jobs:
            if j.outcome is not None and j.ticket is not None:
                assert not j.ticket.claimed and not j.ticket.holds_slot and j.ticket.timer is None, j
        # Slots: those in the body hold one, stalled lane jobs aside; never more than the process has.
        holding = [j for j in live if j.in_body and (j.ticket is None or not j.ticket.stalled)]
        assert len(holding) <= caps.slots
        assert lanes.slots._value == caps.slots - len(holding)  # exact: none leaked, none given twice
        for j in live:
            if j.ticket is not None and j.in_body:
                assert j.ticket.holds_slot == (not j.ticket.stalled), j
        # Shares and the pool: counted jobs are those in the body, or admitted and waiting for a slot.
        in_body = Counter(j.lane for j in live if j.lane is not None and j.in_body)
        for lane, n in lanes.running.items():
            assert in_body[lane] <= n <= caps.share, (lane, n)
        assert set(in_body) <= set(lanes.running)
        unstalled = sum(1 for j in live if j.lane is not None and j.in_body and not j.ticket.stalled)  # type: ignore[union-attr]
        assert unstalled <= lanes.in_pool <= caps.pool
        # Claims: exactly the tickets still claimed, within each lane's cap and the pool's.
        claimed = Counter(t.lane for t in tickets if t.claimed)
        assert dict(claimed) == lanes.claimed
        assert all(n <= caps.claims for n in claimed.values()), claimed
        pool_claimed = sum(1 for t in tickets if t.claimed and not t.stalled)
        assert pool_claimed == lanes.pool_claimed <= caps.pool_claims
        # Stalls: within the cap, each after STALL; a request over STALL stalls, or will at its next try.
        stalled = Counter(t.lane for t in tickets if t.stalled)
        assert dict(stalled) == lanes.stalled
        assert sum(stalled.values()) == lanes.stalled_total <= caps.stalled_max
        key = round(now, 6)
        self.cap_full_at[key] = self.cap_full_at.get(key, False) or lanes.stalled_total == caps.stalled_max
        for j in live:
            if j.ticket is None or not j.in_body or j.entered is None:
                continue
            if j.ticket.stalled:
                assert now - j.entered >= STALL - 1e-6, j  # the loop runs timers its clock resolution early
            else:  # its timer is due within STALL; if it fired already, the stalled cap was full then
                assert j.ticket.timer is not None, f"job {j.n} ran {now - j.entered} s and will never stall"
                when = j.ticket.timer.when()
                assert now - 1e-6 < when <= now + STALL, (j.n, now, when)
                if when - STALL > j.entered + 1e-6:
                    assert self.cap_full_at.get(round(when - STALL, 6)), f"job {j.n} did not stall"
        # Parked jobs: none of a blocked lane, and none that a free slot of its lane and the pool could take.
        waiting = [t for t, turn in lanes.waiting if not turn.done()]
        assert len(waiting) == lanes.parked
        blocked = self.blocked()
        for t in waiting:
            assert t.lane not in blocked, f"{t.lane} is blocked and still has parked jobs"
            assert not (lanes.running.get(t.lane, 0) < caps.share and lanes.in_pool < caps.pool), t.lane
        # A lane (or the pool) the claims left alone that may be claimed from again: on_room said so.
        plan = lanes.plan(caps.batch)
        excluded = (plan.all_full, set(plan.full))
        was_all, was_full = self.excluded_before
        opened = (was_all and not plan.all_full) or (not plan.all_full and bool(was_full - set(plan.full)))
        if opened:
            assert self.rooms > self.rooms_seen, f"claimable again without on_room: {was_full} -> {plan}"
        self.excluded_before, self.rooms_seen = excluded, self.rooms

    async def wind_down(self) -> None:
        """Every receiver answers, every outcome and release is written: all jobs end, and nothing is held."""
        for _ in range(200):
            if not any(j.task is not None and not j.task.done() for j in self.jobs):
                break
            for j in self.live():
                j.answer.set()
                j.recorded.set()
                j.released.set()
            await self.advance(0.1)
            self.check()
        assert all(j.outcome is not None for j in self.jobs)
        assert sum(self.ended.values()) == len(self.jobs)
        lanes = self.lanes
        assert (lanes.running, lanes.claimed, lanes.stalled) == ({}, {}, {})
        assert (lanes.in_pool, lanes.pool_claimed, lanes.stalled_total, lanes.parked) == (0, 0, 0, 0)
        assert not lanes.waiting
        assert lanes.slots._value == self.caps.slots


def drive(caps: Caps, seed: int, steps: int, lanes: int, hanging: int) -> Counter[str]:
    async def main() -> Counter[str]:
        driver = Driver(caps, seed, lanes, hanging)
        for _ in range(steps):
            await driver.step()
        await driver.wind_down()
        return driver.ended

    with asyncio.Runner(loop_factory=VirtualClockLoop) as runner:
        return runner.run(main())


@pytest.mark.parametrize(
    ("caps", "seed", "lanes", "hanging"),
    [
        (RUNNER, 1, 12, 10),  # more receivers hang than the stalled cap holds at their whole share
        (RUNNER, 2, 12, 4),
        (RUNNER, 3, 30, 12),
        (SMALL, 4, 8, 5),
        (SMALL, 5, 5, 2),
        (SMALL, 6, 12, 12),
    ],
)
def test_lanes_keep_their_rules_under_random_interleavings(
    caps: Caps, seed: int, lanes: int, hanging: int
) -> None:
    ended = drive(caps, seed, steps=2500, lanes=lanes, hanging=hanging)
    # The run went where the rules matter: jobs finished, were handed back and were cancelled.
    assert ended["finished"] > 100 and ended["handed back"] > 0 and ended["cancelled"] > 0, ended


def test_a_blocked_lane_stays_left_alone_while_its_stalled_jobs_write_their_outcomes() -> None:
    """Was: once the stalled jobs of a blocked lane had all returned (unclaimed, their outcomes being written),
    the lane was no longer among the plan's full lanes: a claim took its jobs only to hand them back."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualClockLoop)
        lanes = Lanes(
            slots=4,
            share=2,
            pool=3,
            claims=4,
            pool_claims=8,
            least=2,
            stall=STALL,
            stalled_max=8,
            on_room=lambda: None,
        )
        returned = asyncio.Event()
        tickets = [lanes.claim("hangs") for _ in range(2)]

        async def run(ticket: Ticket | None) -> None:
            async with lanes.slot(ticket):
                await returned.wait()  # the receiver answers at its timeout
                lanes.unclaim(ticket)
                await asyncio.Event().wait()  # its outcome is being written

        tasks = [asyncio.create_task(run(t)) for t in tickets]
        await settle()
        loop.now += STALL
        await settle()
        assert lanes.plan(4).full == ["hangs"]  # blocked: its whole share stalled
        returned.set()
        await settle()
        assert lanes.claimed == {} and lanes.stalled == {"hangs": 2}
        assert lanes.plan(4).full == ["hangs"]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    with asyncio.Runner(loop_factory=VirtualClockLoop) as runner:
        runner.run(main())


@pytest.mark.parametrize(("hanging", "healthy_running"), [(8, 24), (9, 8), (10, 0)])
def test_eight_receivers_hanging_with_their_whole_share_leave_the_slots_to_healthy_ones(
    hanging: int, healthy_running: int
) -> None:
    """The README's figures, with the runner's caps: 8 receivers' 16 hanging requests each fill the 128
    stalled ones; a ninth's keep 16 of the 24 slots of the lanes, a tenth's the rest."""

    async def main() -> int:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualClockLoop)
        caps = RUNNER
        lanes = Lanes(
            slots=caps.slots,
            share=caps.share,
            pool=caps.pool,
            claims=caps.claims,
            pool_claims=caps.pool_claims,
            least=caps.least,
            stall=STALL,
            stalled_max=caps.stalled_max,
            on_room=lambda: None,
        )
        never = asyncio.Event()
        in_body: Counter[str] = Counter()

        async def run(lane: str) -> None:
            ticket = lanes.claim(lane)
            with contextlib.suppress(HandedBack):
                async with lanes.slot(ticket):
                    in_body[lane] += 1
                    await never.wait()

        tasks = []
        for r in range(hanging):  # one after another, each a backlog: its whole share runs, then hangs
            tasks += [asyncio.create_task(run(f"hangs-{r}")) for _ in range(caps.share)]
            await settle()
            loop.now += STALL
            await settle()
        tasks += [asyncio.create_task(run(f"healthy-{h}")) for h in range(3) for _ in range(8)]
        await settle()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return sum(n for lane, n in in_body.items() if lane.startswith("healthy"))

    with asyncio.Runner(loop_factory=VirtualClockLoop) as runner:
        assert runner.run(main()) == healthy_running
