"""Enqueueing durable jobs. The runner (agentmx.jobs.runner) executes them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from agentmx.db.engine import after_commit
from agentmx.db.models import Job
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


async def cancel(session: AsyncSession, key: str) -> None:
    await session.execute(delete(Job).where(Job.key == key))
