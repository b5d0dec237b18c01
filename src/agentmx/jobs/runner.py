"""The only loop that runs jobs: claims due rows, dispatches them, records the outcome.

PostgreSQL claims with FOR UPDATE SKIP LOCKED, so several processes share one queue and each
job runs in one of them. SQLite serialises writers, so the same UPDATE is safe there too.
A claim lasts ``job_lease`` and is renewed while the job waits or runs: a slow job (mail to a
slow host, one recipient after another) is not claimed again while its process keeps renewing it.
A process stopped for longer than the lease (suspended, its clock stepped) loses its claims; the job
may then run twice, which handlers tolerate (at least once). A process that stops cleanly hands its
unfinished claims back at once. A job whose outcome the database refuses is finished (its work done)
or counted as an unexpected failure (``_record``), never left claimed to run again at every lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Integer, Update, bindparam, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from agentmx.db.models import Job
from agentmx.db.retryable import retryable
from agentmx.db.transient import table_of
from agentmx.db.types import utcnow
from agentmx.failure_log import FailureLog
from agentmx.jobs.lanes import ClaimPlan, HandedBack, Lanes, Ticket, lane_of
from agentmx.jobs.registry import FAILURES, HANDLERS, LANE_KEYS, Inserts, RetryAt, failures
from agentmx.services.group_commit import committer
from agentmx.services.runtime import Runtime

log = logging.getLogger("agentmx.jobs")

JOBS = table_of(Job)  # Core statements: the ORM DML path costs more than the SQL
BATCH = 32  # jobs claimed at most per claim (running plus waiting for a slot)
ROOM = BATCH // 2  # after a full claim, claim again once this many of its jobs are done
GATHER = 0.01  # seconds
STALL = 1.0  # seconds a job of a lane runs before it stops holding a slot (jobs/lanes.py)
FAILURE_BACKOFF = (5, 30, 120, 600, 1800)  # seconds, for handlers that raise unexpectedly
MAX_UNEXPECTED_FAILURES = 10


async def _insert_rows(session: AsyncSession, inserts: Inserts) -> None:
    """One multi-row INSERT per table for the rows handlers asked to store with their outcome."""
    by_table: dict[Any, list[dict[str, Any]]] = {}
    for table, row in inserts:
        by_table.setdefault(table, []).append(row)
    for table, rows in by_table.items():
        await session.execute(insert(table_of(table)), rows)  # Core: cheaper than the ORM bulk path


async def _delete_finished(
    session: AsyncSession, rt: Runtime, done: list[tuple[int, str, Inserts]]
) -> list[None]:
    """Group-commit handler: delete finished jobs still held by the worker that ran them."""
    await _insert_rows(session, [item for _, _, inserts in done for item in inserts])
    by_worker: dict[str, list[int]] = {}
    for job_id, worker_id, _ in done:
        by_worker.setdefault(worker_id, []).append(job_id)
    for worker_id, ids in by_worker.items():
        await session.execute(delete(JOBS).where(JOBS.c.id.in_(ids), JOBS.c.locked_by == worker_id))
    return [None] * len(done)


def _claim_statement(postgres: bool, plan: ClaimPlan) -> Update:
    """Claim up to :free due jobs for :worker, leaving alone the :full lanes, or every lane (jobs/lanes.py)."""
    if plan.all_full:
        return _built_claim(postgres, (), tuple(sorted(LANE_KEYS)))
    return _built_claim(postgres, tuple(sorted(LANE_KEYS.items())) if plan.full else (), ())


@functools.cache
def _built_claim(
    postgres: bool, lane_keys: tuple[tuple[str, str], ...], lane_kinds: tuple[str, ...]
) -> Update:
    """Built once: statement building cost more than running it."""
    c = JOBS.c
    now = bindparam("now", type_=c.run_at.type)
    due = (
        select(c.id)
        .where(c.run_at <= now, (c.locked_until.is_(None)) | (c.locked_until < now))
        .order_by(c.run_at)
        .limit(bindparam("free", type_=Integer))
    )
    for kind, key in lane_keys:
        # coalesce: a payload without the key is in no lane (NULL IN (...) would leave it unclaimed).
        lane = func.coalesce(c.payload[key].as_string(), "")
        due = due.where(~((c.kind == kind) & lane.in_(bindparam("full", expanding=True))))
    if lane_kinds:
        due = due.where(c.kind.not_in(lane_kinds))
    if postgres:
        due = due.with_for_update(skip_locked=True)
    return (
        update(JOBS)
        .where(c.id.in_(due.scalar_subquery()))
        .values(locked_by=bindparam("worker"), locked_until=bindparam("until", type_=now.type))
        .returning(c.id, c.kind, c.payload, c.attempts)
    )


class JobRunner:
    # 32 slots. One receiver (a lane, jobs/lanes.py) may hold half: the 16 one receiver had before
    # (16 slots and no lanes). All receivers together may hold three quarters: a quarter (8) is kept for
    # outbound mail, local delivery and other jobs however many receivers hang. A request that hangs
    # past STALL gives its slot back, up to 4 * 32 such requests (sockets: fd_budget.RESERVE), so 8
    # receivers hanging with their whole share of 16 leave the slots to healthy ones; past that a
    # hanging request keeps its slot until it times out. A receiver seen slow gets fewer requests
    # (delivery.SLOW_LIMIT).
    # Deliveries started together share one lookup (events/targets.py).
    def __init__(self, rt: Runtime, concurrency: int = 32) -> None:
        self.rt = rt
        self.worker_id = secrets.token_hex(8)
        self.lanes = Lanes(
            slots=concurrency,
            share=max(1, concurrency // 2),
            pool=max(1, concurrency - concurrency // 4),
            claims=BATCH,
            pool_claims=2 * BATCH,
            least=ROOM,
            stall=STALL,
            stalled_max=4 * concurrency,
            on_room=self._lane_room,
        )
        self.tasks: set[asyncio.Task[None]] = set()
        self.claimed: set[int] = set()  # job ids this runner holds (waiting for a slot or running)
        # Job ids whose claim is being released (``HandedBack``), once per hand-back: a job claimed again once
        # its release committed may be handed back again before that release returns.
        self.handing_back: Counter[int] = Counter()
        self.lease = timedelta(seconds=rt.settings.job_lease)
        self._loop_task: asyncio.Task[None] | None = None
        self._renew_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._room = asyncio.Event()  # set when ROOM claimed jobs are done since the last full claim
        self._lane_opened = False  # a lane left alone got room since the last claim began

    async def start(self) -> None:
        if self.rt.db.is_sqlite:
            # One process owns a SQLite database: locks left by a killed predecessor are stale.
            async with self.rt.db.transaction() as s:
                await s.execute(update(Job).values(locked_by=None, locked_until=None))
        self._loop_task = asyncio.create_task(self._loop(), name="job-runner")
        self._renew_task = asyncio.create_task(self._renew(), name="job-lease-renewal")

    async def stop(self) -> None:
        self._stopping = True
        for background in (self._loop_task, self._renew_task):
            if background:
                background.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await background
        held = list(self.claimed.union(self.handing_back))  # a release cut short by the cancel is redone
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        await self._release(held)

    async def _release(self, held: list[int], *, locked_until_at_most: datetime | None = None) -> None:
        """Hand back the claims of jobs stopped before they finished, so that another process (or
        this one restarted) runs them now rather than when their lease ends. A handler cut short may
        have done part of its work; it runs again from the start either way (at least once).
        ``locked_until_at_most``: only claims that end by then (``_hand_back``)."""
        if not held:
            return
        mine: list[ColumnElement[bool]] = [JOBS.c.id.in_(held), JOBS.c.locked_by == self.worker_id]
        if locked_until_at_most is not None:
            mine.append(JOBS.c.locked_until <= locked_until_at_most)
        try:
            async with self.rt.db.transaction() as s:
                await s.execute(update(JOBS).where(*mine).values(locked_by=None, locked_until=None))
        except Exception:
            log.exception(
                "releasing the claims of %d stopped jobs failed (they wait for their lease)", len(held)
            )

    async def _loop(self) -> None:
        interval = self.rt.settings.job_poll_interval
        claims = FailureLog(log, "job claim")
        while not self._stopping:
            free = BATCH - self.active
            self._lane_opened = False
            asked = 0
            try:
                claimed, asked = await self.run_due(free) if free > 0 else (0, 0)
                claims.succeeded()
            except Exception as exc:
                claims.failed(exc)
                claimed = -1
            if claimed == asked < free:
                # Fewer asked for than there was room, so that a lane stays within its claims: more may
                # be due now (that lane's claims are full, or others' jobs came with it).
                continue
            if claimed == asked:
                # All it could take: more may be due (a backlog). Claim again once there is room,
                # not at the next poll or commit (a backlog drained at BATCH jobs per poll interval).
                await self._wait_for_room(interval)
            elif self._lane_opened:
                # During the claim, which left that lane's jobs alone: its backlog waits for no poll.
                await asyncio.sleep(GATHER)
            else:
                await self.rt.jobs_signal.wait(interval)
                # Let jobs committed in the next few ms join this claim: one claim transaction for
                # several jobs (each costs a commit) at the price of GATHER of latency.
                await asyncio.sleep(GATHER)

    async def _wait_for_room(self, interval: float) -> None:
        """Until ROOM of the claimed jobs are done, or ``interval`` (the poll) passes."""
        self._room.clear()
        if self.active > BATCH - ROOM:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._room.wait(), interval)

    @property
    def active(self) -> int:
        """Claimed jobs running or waiting for a slot: those parked by their lane's caps (jobs/lanes.py) and
        those stalled do not count, or hanging receivers' requests and backlogs, claimed, would stop the
        claims for every other job."""
        return len(self.tasks) - self.lanes.parked - self.lanes.stalled_total

    def _job_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if self.active <= BATCH - ROOM:
            self._room.set()

    def _lane_room(self) -> None:
        """A lane (or all lanes) left alone by the claims has room again: claim now, not at the next poll."""
        self._lane_opened = True
        self._room.set()
        self.rt.jobs_signal.notify()

    async def _renew(self) -> None:
        """Every third of the lease, extend the claims this runner holds."""
        every = self.lease.total_seconds() / 3
        while not self._stopping:
            await asyncio.sleep(every)
            held = list(self.claimed)
            if not held:
                continue
            try:
                async with self.rt.db.transaction() as s:
                    renewed = await s.execute(
                        update(JOBS)
                        .where(JOBS.c.id.in_(held), JOBS.c.locked_by == self.worker_id)
                        .values(locked_until=utcnow() + self.lease)
                        .returning(JOBS.c.id)
                    )
                    kept = len(renewed.all())
            except Exception:
                log.exception("renewing the claims of %d jobs failed", len(held))
                continue
            lost = len(held) - kept
            if lost > 0:  # finished meanwhile, or taken over after a pause longer than the lease
                log.info("%d of %d held job claims were not renewed", lost, len(held))

    async def run_due(self, free: int) -> tuple[int, int]:
        """Claim up to ``free`` due jobs (fewer when a lane has less room, jobs/lanes.py) and start them;
        returns how many were started (a job of ours claimed again is not: counted, a claim loop seeing
        it "full" could spin) and how many were asked for."""
        now = utcnow()
        plan = self.lanes.plan(free)
        claim = _claim_statement(not self.rt.db.is_sqlite, plan)
        params: dict[str, Any] = {
            "now": now,
            "until": now + self.lease,
            "worker": self.worker_id,
            "free": plan.size,
        }
        if plan.full and not plan.all_full:
            params["full"] = plan.full
        async with self.rt.db.transaction() as s:  # one statement: claim and read back
            jobs = (await s.execute(claim, params)).all()
        started = 0
        for job_id, kind, payload, attempts in jobs:
            if job_id in self.claimed:
                # Ours, its handler waiting or running: its claim looked lapsed (the wall clock
                # stepped ahead of the renewal's), so the claim above only renewed it.
                continue
            ticket = self.lanes.claim(lane_of(kind, payload))
            task = asyncio.create_task(self._run(job_id, kind, payload, attempts, ticket))
            self.tasks.add(task)
            self.claimed.add(job_id)
            task.add_done_callback(self._job_done)
            started += 1
        return started, plan.size

    async def _call(
        self, job_id: int, kind: str, payload: dict[str, Any], attempts: int, ticket: Ticket | None
    ) -> Inserts | None:
        """The job's handler. Once it returns or raises, the claim is no longer this runner's to renew
        or to guard: the outcome's commit releases it, and the job may be claimed again at once."""
        try:
            fn = HANDLERS.get(kind)
            if fn is None:
                raise RuntimeError(f"no handler for job kind {kind!r}")
            return await fn(self.rt, payload, attempts)
        finally:
            self.claimed.discard(job_id)
            self.lanes.unclaim(ticket)

    async def _run(self, job_id: int, kind: str, payload: Any, attempts: int, ticket: Ticket | None) -> None:
        if not isinstance(payload, dict):
            # No handler can run it (written by hand, or by a broken version): it failed the whole
            # claim, for ever, and the jobs claimed with it waited behind it.
            log.error(
                "job %s (%s): its payload is not a JSON object (%.200r): dropped", job_id, kind, payload
            )
            await self._record(job_id, kind, {}, functools.partial(self._finish, job_id), done=True)
            self.claimed.discard(job_id)
            return
        try:
            await self._run_in_slot(job_id, kind, payload, attempts, ticket)
        except HandedBack:
            # Its receiver holds its whole share hanging: back to the queue, due, unattempted; claims
            # leave that lane alone until one of its requests ends (jobs/lanes.py). Out of ``claimed``
            # before the release commits: a claim that takes it once committed (its lane unblocked) must
            # start it, not skip it as ours and leave it locked, run by nobody, for its whole lease.
            self.claimed.discard(job_id)
            await self._hand_back(job_id)
        finally:
            # Its handler gives its claim back as it returns; a job handed back, or cancelled (stop)
            # while parked by its lane, never ran its handler.
            self.lanes.unclaim(ticket)

    async def _hand_back(self, job_id: int) -> None:
        """Release the claim of a job handed back, unrun. Only the claim it was handed back with: every
        lease this runner wrote for it (claim, renewals) ends by now + lease. Should the release run after
        that claim lapsed (this process paused, the database stalled) and after this runner claimed the job
        again and started it, that new claim ends later and stays: released, another process would run the
        job a second time alongside."""
        self.handing_back[job_id] += 1
        try:
            await self._release([job_id], locked_until_at_most=utcnow() + self.lease)
        finally:
            self.handing_back[job_id] -= 1
            if not self.handing_back[job_id]:
                del self.handing_back[job_id]

    async def _run_in_slot(
        self, job_id: int, kind: str, payload: dict[str, Any], attempts: int, ticket: Ticket | None
    ) -> None:
        async with self.lanes.slot(ticket):
            done = False
            try:
                # dict(): ours stays as claimed
                inserts = await self._call(job_id, kind, dict(payload), attempts, ticket)
            except RetryAt as retry:
                next_payload = retry.payload
                if FAILURES in (next_payload if next_payload is not None else payload):
                    # A planned retry ends a run of unexpected failures.
                    next_payload = {k: v for k, v in (next_payload or payload).items() if k != FAILURES}
                record = functools.partial(
                    self._reschedule,
                    job_id,
                    retry.when,
                    retry.reason,
                    next_payload,
                    count=True,
                    inserts=retry.inserts,
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failed = failures(payload) + 1
                if failed >= MAX_UNEXPECTED_FAILURES:
                    log.exception("job %s (%s) failed %d times in a row: given up", job_id, kind, failed)
                    record = functools.partial(self._finish, job_id)
                else:
                    log.exception("job %s (%s) failed", job_id, kind)
                    delay = FAILURE_BACKOFF[min(failed - 1, len(FAILURE_BACKOFF) - 1)]
                    record = functools.partial(
                        self._reschedule,
                        job_id,
                        utcnow() + timedelta(seconds=delay),
                        repr(exc),
                        {**payload, FAILURES: failed},
                        count=True,
                    )
            else:
                done = True
                record = functools.partial(self._finish, job_id, inserts or [])
            await self._record(job_id, kind, payload, record, done=done)

    async def _record(
        self,
        job_id: int,
        kind: str,
        payload: dict[str, Any],
        record: Callable[[], Awaitable[None]],
        *,
        done: bool,
    ) -> None:
        """Write the job's outcome. If that fails (a value a column cannot hold, a constraint, a
        serialization failure twice), the job is not left claimed: its lease would lapse and it would
        run again, and fail to record again, for ever, repeating its work (a webhook POSTed every
        lease). Instead a done job is finished without the rows it asked for, and any other counts
        one unexpected failure, so a job that can never record its outcome is given up after
        MAX_UNEXPECTED_FAILURES."""
        try:
            try:
                await record()
            except Exception as exc:
                if not retryable(exc):
                    raise
                await record()  # a lost serialization check or deadlock: the same write once more
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("job %s (%s): recording its outcome failed", job_id, kind)
        try:
            if done:
                await self._finish(job_id)  # its work is done: running it again would repeat it
                return
            failed = failures(payload) + 1
            if failed >= MAX_UNEXPECTED_FAILURES:
                log.error("job %s (%s) could not record its outcome %d times: given up", job_id, kind, failed)
                await self._finish(job_id)
                return
            delay = FAILURE_BACKOFF[min(failed - 1, len(FAILURE_BACKOFF) - 1)]
            await self._reschedule(
                job_id,
                utcnow() + timedelta(seconds=delay),
                "its outcome could not be recorded",
                {**payload, FAILURES: failed},
                count=True,
            )
        except asyncio.CancelledError:
            raise
        except Exception:  # the database is down: the job runs again once its lease lapses
            log.exception("job %s (%s): recording its failure failed too", job_id, kind)

    async def _finish(self, job_id: int, inserts: Inserts | None = None) -> None:
        # Jobs finishing together share one delete and one commit; until it commits, a crash
        # only means the job runs again after its lease (handlers are at-least-once anyway).
        await committer(self.rt, _delete_finished).submit((job_id, self.worker_id, inserts or []))

    async def _reschedule(
        self,
        job_id: int,
        when: datetime,
        reason: str,
        payload: dict[str, Any] | None,
        *,
        count: bool,
        inserts: Inserts | None = None,
    ) -> None:
        values: dict[str, Any] = {
            "run_at": when,
            "locked_by": None,
            "locked_until": None,
            "last_error": reason.replace("\x00", "")[:2000],  # PostgreSQL text holds no NUL
        }
        if payload is not None:
            values["payload"] = payload
        if count:
            values["attempts"] = Job.attempts + 1
        async with self.rt.db.transaction() as s:
            await _insert_rows(s, inserts or [])
            await s.execute(
                update(Job).where(Job.id == job_id, Job.locked_by == self.worker_id).values(**values)
            )
        self.rt.jobs_signal.notify()
