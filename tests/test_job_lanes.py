"""The job runner's lanes (jobs/lanes.py) in one process, on a real database: the runner claims as its
loop would, and the jobs' handlers wait until the test lets each one go, so every count is exact."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, insert, select
from sqlalchemy.orm import ORMExecuteState, Session
from sqlalchemy.util import await_only

from agentmx.blobs import BlobStore
from agentmx.db.engine import Database
from agentmx.db.models import Job
from agentmx.db.prepare import prepare
from agentmx.db.types import utcnow
from agentmx.jobs.registry import handler
from agentmx.jobs.runner import BATCH, JobRunner
from agentmx.services.runtime import Runtime
from agentmx.settings import Settings
from agentmx.testing import postgres
from conftest import BACKENDS, make_server

LANE_JOB = "test_lanes_receiver_job"  # in a lane, like deliver_webhook
PLAIN_JOB = "test_lanes_plain_job"  # in no lane, like outbound delivery

gates: dict[int, asyncio.Event] = {}  # job number -> set to let its handler return
started: list[int] = []  # job numbers whose handler began, in order


async def wait_for_gate(rt: Runtime, payload: dict[str, Any], attempts: int) -> None:
    started.append(payload["n"])
    await gates[payload["n"]].wait()


handler(LANE_JOB, lane="receiver")(wait_for_gate)
handler(PLAIN_JOB)(wait_for_gate)


@pytest.fixture(params=BACKENDS)
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    _, url = make_server(tmp_path, request.param)  # skips PostgreSQL when it is not reachable
    found = Settings.model_validate({"data_dir": tmp_path / "data", "database_url": url or ""})
    prepare(found)
    gates.clear()
    started.clear()
    try:
        yield found
    finally:
        if url:
            postgres.drop_database(url)


def run_with_runner(
    settings: Settings, scenario: Callable[[JobRunner], Awaitable[None]], concurrency: int = 32
) -> None:
    async def run() -> None:
        rt = Runtime(
            settings=settings,
            db=Database(settings.effective_database_url),
            blobs=BlobStore(settings.effective_blob_dir),
        )
        runner = JobRunner(rt, concurrency)  # not started: the test claims, as the runner's loop would
        try:
            await scenario(runner)
        finally:
            for gate in gates.values():
                gate.set()
            await runner.stop()
            await rt.db.dispose()

    asyncio.run(run())


async def add_jobs(runner: JobRunner, kind: str, numbers: range, receiver: str = "") -> None:
    """Due jobs, all with one ``run_at``, later than the previous call's (the claim takes the oldest first)."""
    run_at = utcnow()
    await asyncio.sleep(0.01)  # the next call's jobs are due later
    rows = [{"kind": kind, "payload": {"n": n, "receiver": receiver}, "run_at": run_at} for n in numbers]
    for n in numbers:
        gates[n] = asyncio.Event()
    async with runner.rt.db.transaction() as s:
        await s.execute(insert(Job), rows)


async def settle() -> None:
    """Let every new job's task run to where it waits (its gate, a slot or its lane)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def claim_all(runner: JobRunner) -> None:
    """Claim as the runner's loop does (as many as it has room for) until a claim adds no job."""
    while (free := BATCH - runner.active) > 0:
        before = len(runner.tasks)
        await runner.run_due(free)
        await settle()
        if len(runner.tasks) == before:
            return


async def locked(runner: JobRunner) -> int:
    async with runner.rt.db.transaction() as s:
        return int(
            (await s.execute(select(func.count()).where(Job.locked_by == runner.worker_id))).scalar_one()
        )


async def finish(runner: JobRunner, n: int) -> None:
    """Let job ``n`` return and wait until the runner has recorded it."""
    count = len(runner.tasks)
    gates[n].set()
    deadline = time.monotonic() + 30
    while len(runner.tasks) >= count:
        assert time.monotonic() < deadline, f"job {n} did not finish"
        await asyncio.sleep(0.01)
    await settle()


def test_a_lane_never_holds_more_claims_than_its_cap(settings: Settings) -> None:
    """Was: a lane just under its cap of claims (BATCH) could claim another whole batch: 47 held
    here, claimed with a lease, of which 31 waited without a slot."""

    async def scenario(runner: JobRunner) -> None:
        await add_jobs(runner, LANE_JOB, range(60), receiver="slow")
        await claim_all(runner)
        held = [await locked(runner)]
        for _ in range(60):  # one job at a time ends; after each the runner claims what it may
            await finish(runner, next(n for n in started if not gates[n].is_set()))
            await claim_all(runner)
            held.append(await locked(runner))
        assert max(held) <= BATCH, held
        assert sorted(started) == list(range(60))  # and the lane's jobs all ran

    run_with_runner(settings, scenario)


def test_receivers_that_hang_leave_slots_for_jobs_in_no_lane(settings: Settings) -> None:
    """Was: two receivers (lanes) of 16 jobs each took all 32 slots, and a job in no lane (outbound
    mail) was not even claimed until one of their jobs ended."""

    async def scenario(runner: JobRunner) -> None:
        await add_jobs(runner, LANE_JOB, range(0, 20), receiver="hangs-1")
        await add_jobs(runner, LANE_JOB, range(20, 40), receiver="hangs-2")
        await add_jobs(runner, LANE_JOB, range(40, 60), receiver="hangs-3")
        await add_jobs(runner, PLAIN_JOB, range(100, 101))
        await claim_all(runner)
        assert 100 in started
        # Receivers together hold at most three quarters of the slots and two batches of claims.
        assert len([n for n in started if n < 100]) <= 24
        assert await locked(runner) <= 2 * BATCH + 1

    run_with_runner(settings, scenario)


async def claim_until(runner: JobRunner, reached: Callable[[], bool]) -> None:
    """Claim as the runner's loop does until ``reached`` (stalls take STALL of real time)."""
    deadline = time.monotonic() + 30
    while not reached():
        assert time.monotonic() < deadline, "not reached in time"
        await claim_all(runner)
        await asyncio.sleep(0.05)


def test_receivers_that_hang_leave_the_slots_and_claims_to_a_healthy_one(settings: Settings) -> None:
    """Was: jobs that hang held their slots until they ended: two receivers' took all 24 slots of the
    lanes, and their backlogs, parked, the lanes' 64 claims: another receiver's jobs waited, unclaimed."""

    async def scenario(runner: JobRunner) -> None:
        hanging = 5
        for r in range(hanging):
            await add_jobs(runner, LANE_JOB, range(r * 40, r * 40 + 40), receiver=f"hangs-{r}")
        # Each runs its share once those running have stalled: more than the lanes' 24 slots in all.
        await claim_until(runner, lambda: len(started) == hanging * 16)
        await add_jobs(runner, LANE_JOB, range(1000, 1020), receiver="healthy")
        for n in range(1000, 1020):
            gates[n].set()  # it answers at once
        await claim_until(runner, lambda: len([n for n in started if n >= 1000]) == 20)
        for r in range(hanging):
            assert len([n for n in started if r * 40 <= n < r * 40 + 40]) == 16  # its share
        # The hanging receivers' parked jobs were handed back: they hold only their running ones.
        assert await locked(runner) <= hanging * 16 + 20

    run_with_runner(settings, scenario)


def test_a_stop_gives_back_the_claims_of_parked_jobs(settings: Settings) -> None:
    """Was: a job parked by its lane's share, cancelled by the runner's stop, kept its claim in the lanes'
    counts (its handler, which gives it back, never ran)."""

    async def scenario(runner: JobRunner) -> None:
        await add_jobs(runner, LANE_JOB, range(20), receiver="slow")
        await claim_all(runner)
        assert len(started) == 16 and runner.lanes.parked == 4  # its share runs, the rest waits
        await runner.stop()
        assert (runner.lanes.claimed, runner.lanes.pool_claimed, runner.lanes.running) == ({}, 0, {})
        assert await locked(runner) == 0  # and the database's claims are handed back

    run_with_runner(settings, scenario)


RELEASE = "UPDATE jobs SET locked_by=:locked_by, locked_until=:locked_until WHERE jobs.id IN"


def release_paused(
    when: str, paused: asyncio.Event, resume: asyncio.Event
) -> contextlib.AbstractContextManager[None]:
    """The runner's first release of a claim (``UPDATE jobs SET locked_by=NULL, locked_until=NULL``) waits
    until ``resume``: "before" it runs, or "after_commit" (the row claimable again: a slow answer to COMMIT)."""
    return releases_paused({1: (when, paused, resume)})


# PostgreSQL only: on SQLite one writer at a time keeps the claim, and job 0's outcome, out until the
# release has returned.
@pytest.mark.parametrize("settings", ["postgres"], indirect=True)
def test_a_job_handed_back_is_claimed_and_run_by_a_claim_during_its_release(settings: Settings) -> None:
    """Was (PostgreSQL): a claim run between the hand-back's release commit and the release's return took
    the job (claimable again) but skipped it, still in the runner's claimed set; the job then sat locked,
    run by nobody, until its lease (job_lease, 300 s) lapsed."""

    async def scenario(runner: JobRunner) -> None:
        paused, resume = asyncio.Event(), asyncio.Event()
        with release_paused("after_commit", paused, resume):
            await add_jobs(runner, LANE_JOB, range(2), receiver="hangs")
            await claim_all(runner)
            assert started == [0] and runner.lanes.parked == 1  # a share of 1: job 1 waits
            # Job 0 stalls (STALL): its lane is blocked and job 1 handed back; its release commits.
            await asyncio.wait_for(paused.wait(), 30)
            await finish(runner, 0)  # the receiver answers: its lane may be claimed from again
            await claim_all(runner)  # while the release has committed but not returned
            resume.set()
            await settle()
            await claim_all(runner)
            assert started == [0, 1]  # job 1 runs now, not when its lease lapses
            assert await locked(runner) == 1

    run_with_runner(settings, scenario, concurrency=2)


def test_a_stop_during_a_hand_back_gives_its_claim_back(settings: Settings) -> None:
    """A job handed back leaves the runner's claimed set before its release commits: a stop that cancels
    that release (before it ran) still hands the claim back, as it does the claimed set's."""

    async def scenario(runner: JobRunner) -> None:
        paused, resume = asyncio.Event(), asyncio.Event()
        with release_paused("before", paused, resume):
            await add_jobs(runner, LANE_JOB, range(2), receiver="hangs")
            await claim_all(runner)
            await asyncio.wait_for(paused.wait(), 30)  # job 0 stalled, job 1's release not yet run
            await runner.stop()
        assert await locked(runner) == 0

    run_with_runner(settings, scenario, concurrency=2)


@contextlib.contextmanager
def releases_paused(pauses: dict[int, tuple[str, asyncio.Event, asyncio.Event]]) -> Iterator[None]:
    """The runner's releases of a claim, counted from 1: release ``k`` in ``pauses`` waits until its resume
    event, "before" its UPDATE runs or "after_commit"; ``paused`` is set as it starts to wait."""
    seen = 0

    def pause(k: int) -> None:
        paused, resume = pauses[k][1:]
        paused.set()
        await_only(resume.wait())

    def on_execute(state: ORMExecuteState) -> None:
        nonlocal seen
        if not (state.is_update and str(state.statement).startswith(RELEASE)):
            return
        seen += 1
        if seen in pauses:
            if pauses[seen][0] == "before":
                pause(seen)
            else:
                state.session.info["pause_after_commit"] = seen

    def on_commit(session: Session) -> None:
        k = session.info.pop("pause_after_commit", None)
        if k is not None:
            pause(k)

    event.listen(Session, "do_orm_execute", on_execute)
    event.listen(Session, "after_commit", on_commit)
    try:
        yield
    finally:
        event.remove(Session, "do_orm_execute", on_execute)
        event.remove(Session, "after_commit", on_commit)


@pytest.mark.parametrize("settings", ["postgres"], indirect=True)
def test_a_stop_gives_back_a_job_handed_back_again_before_its_first_release_returned(
    settings: Settings,
) -> None:
    """Was (PostgreSQL): a job handed back, claimed again once that release committed, and handed back again
    left the runner's hand-backs when the first release returned; a stop that then cut the second release
    short left the job locked, run by nobody, until its lease (job_lease, 300 s) lapsed."""

    async def scenario(runner: JobRunner) -> None:
        first_paused, first_resume = asyncio.Event(), asyncio.Event()
        second_paused, second_resume = asyncio.Event(), asyncio.Event()
        # Releases: job 1's, job 2's (committed, slow to return), job 2's again (not yet run).
        pauses = {
            2: ("after_commit", first_paused, first_resume),
            3: ("before", second_paused, second_resume),
        }
        with releases_paused(pauses):
            for n in range(3):  # one at a time: job 0 runs, jobs 1 and 2 wait in this order
                await add_jobs(runner, LANE_JOB, range(n, n + 1), receiver="hangs")
                await claim_all(runner)
            assert started == [0] and runner.lanes.parked == 2  # a share of 1
            # Job 0 stalls (STALL): its lane is blocked, jobs 1 and 2 handed back.
            await asyncio.wait_for(first_paused.wait(), 30)
            await finish(runner, 0)  # its lane may be claimed from again
            for _ in range(2):  # the oldest first: job 1 runs, job 2 waits behind it
                await runner.run_due(1)
                await settle()
            assert started == [0, 1] and runner.lanes.parked == 1
            # Job 1 stalls: job 2 is handed back again while its first release has not returned.
            await asyncio.wait_for(second_paused.wait(), 30)
            first_resume.set()
            await asyncio.sleep(0.2)  # the first release returns
            await runner.stop()  # cancels the second release before it ran
        assert await locked(runner) == 0

    run_with_runner(settings, scenario, concurrency=2)


@pytest.mark.parametrize("settings", ["postgres"], indirect=True)
def test_a_late_hand_back_leaves_alone_the_job_claimed_again_after_its_lease_lapsed(
    settings: Settings,
) -> None:
    """Was (PostgreSQL): a hand-back whose release ran after the job's lease lapsed (a process paused, the
    database stalled) and after this runner claimed it again and started it released that new claim too:
    another process claimed the job and ran it a second time while the first run was going on."""

    async def scenario(runner: JobRunner) -> None:
        other = JobRunner(runner.rt, 2)  # another process on the same database
        paused, resume = asyncio.Event(), asyncio.Event()
        runner.lease = timedelta(seconds=0.5)  # the claims below lapse before the hand-back's release
        try:
            with releases_paused({1: ("before", paused, resume)}):
                await add_jobs(runner, LANE_JOB, range(2), receiver="hangs")
                await claim_all(runner)
                assert started == [0] and runner.lanes.parked == 1
                await asyncio.wait_for(paused.wait(), 30)  # job 0 stalled, job 1's release waits
                runner.lease = timedelta(seconds=300)
                await finish(runner, 0)
                await claim_all(runner)  # job 1's claim had lapsed: claimed again, and started
                assert started == [0, 1]
                resume.set()
                await asyncio.sleep(0.2)  # the late release runs
            assert await locked(runner) == 1  # job 1 is still this runner's
            await other.run_due(2)
            await settle()
            assert started == [0, 1]  # not run a second time elsewhere
        finally:
            await other.stop()

    run_with_runner(settings, scenario, concurrency=2)
