"""Enqueueing durable jobs. The runner (agentmx.jobs.runner) executes them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert
from sqlalchemy import event as sa_event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from agentmx.db.engine import after_commit
from agentmx.db.models import Job
from agentmx.db.transient import table_of
from agentmx.db.types import utcnow
from agentmx.services.runtime import Runtime


async def enqueue(
    session: AsyncSession,
    rt: Runtime,
    kind: str,
    payload: dict[str, Any],
    *,
    run_at: datetime | None = None,
    key: str | None = None,
) -> Job:
    """Add a job in the caller's transaction. ``key`` makes the job unique (see ``cancel``)."""
    job = Job(kind=kind, payload=payload, run_at=run_at or utcnow(), key=key)
    session.add(job)
    after_commit(session, rt.jobs_signal.notify)
    return job


PENDING_JOBS = "agentmx_pending_jobs"


def enqueue_at_commit(
    session: AsyncSession, rt: Runtime, kind: str, payload: dict[str, Any], *, run_at: datetime, key: str
) -> None:
    """Like ``enqueue``, but the row is written as part of one multi-row INSERT at commit.

    For fan-out (a webhook job per event of an inbound batch): an ORM flush would be one INSERT
    and unit-of-work pass per job. Not for jobs that ``cancel`` may delete in the same transaction.
    """
    row = {
        "kind": kind,
        "payload": payload,
        "run_at": run_at,
        "key": key,
        "attempts": 0,
        "created_at": utcnow(),
    }
    pending: list[dict[str, Any]] | None = session.info.get(PENDING_JOBS)
    if pending is None:
        pending = session.info[PENDING_JOBS] = []
        after_commit(session, rt.jobs_signal.notify)
    pending.append(row)


_INSERT_JOB = insert(table_of(Job))  # built once: its cache key is then computed once


# Registered before services.events' listener (which imports this module), so on PostgreSQL the jobs
# are inserted before that listener takes the event lock.
@sa_event.listens_for(Session, "before_commit")
def _insert_pending_jobs(session: Session) -> None:
    rows: list[dict[str, Any]] | None = session.info.pop(PENDING_JOBS, None)
    if rows:
        session.execute(_INSERT_JOB, rows)


async def cancel(session: AsyncSession, key: str) -> None:
    await session.execute(delete(Job).where(Job.key == key))
