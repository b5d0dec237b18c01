"""Group commit: concurrent callers share one write transaction.

Inbound SMTP sessions queue here instead of racing for the SQLite write lock (whose busy handler
sleeps); the handler stores the whole batch with a fixed number of statements and one commit's
fsync covers it. A failing batch is re-run one item per transaction, so a bad item fails only
itself. Handlers must be safe to re-run (they only add rows).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from agentmx.services.runtime import Runtime

log = logging.getLogger("agentmx.db")

I = TypeVar("I")  # noqa: E741
R = TypeVar("R")
Handler = Callable[[AsyncSession, Runtime, list[I]], Awaitable[list[R]]]
MAX_BATCH = 64


@dataclass
class _Unit(Generic[I, R]):
    item: I
    done: asyncio.Future[R]


class GroupCommitter(Generic[I, R]):
    def __init__(self, rt: Runtime, handler: Handler[I, R]) -> None:
        self.rt = rt
        self.handler = handler
        self.pending: list[_Unit[I, R]] = []
        self.task: asyncio.Task[None] | None = None

    async def submit(self, item: I) -> R:
        """Store ``item`` in a shared transaction; returns once that transaction has committed."""
        unit: _Unit[I, R] = _Unit(item, asyncio.get_running_loop().create_future())
        self.pending.append(unit)
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._drain())
        # shield: one caller going away must not cancel a commit others wait on.
        return await asyncio.shield(unit.done)

    async def _drain(self) -> None:
        while self.pending:
            batch, self.pending = self.pending[:MAX_BATCH], self.pending[MAX_BATCH:]
            try:
                results = await self._commit(batch)
            except Exception:
                if len(batch) > 1:
                    log.warning("group commit of %d items failed; retrying one by one", len(batch))
                for unit in batch:
                    try:
                        result = (await self._commit([unit]))[0]
                    except Exception as exc:  # noqa: BLE001 (handed to the waiting caller)
                        _settle(unit, exc)
                    else:
                        _settle(unit, result)
                continue
            for unit, result in zip(batch, results, strict=True):
                _settle(unit, result)

    async def _commit(self, batch: list[_Unit[I, R]]) -> list[R]:
        async with self.rt.db.transaction() as session:
            return await self.handler(session, self.rt, [unit.item for unit in batch])


def _settle(unit: _Unit[Any, Any], outcome: Any) -> None:
    if unit.done.done():
        return
    if isinstance(outcome, BaseException):
        unit.done.set_exception(outcome)
    else:
        unit.done.set_result(outcome)


_committers: dict[tuple[int, Any], GroupCommitter[Any, Any]] = {}


def committer(rt: Runtime, handler: Handler[I, R]) -> GroupCommitter[I, R]:
    """The runtime's committer for ``handler`` (one per process, database and handler)."""
    key = (id(rt), handler)
    found = _committers.get(key)
    if found is None or found.rt is not rt:
        found = _committers[key] = GroupCommitter(rt, handler)
    return found
