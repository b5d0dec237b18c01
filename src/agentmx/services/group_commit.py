"""Group commit: concurrent units of work share one write transaction.

Inbound SMTP sessions queue here instead of racing for the SQLite write lock (whose busy handler
sleeps), and one commit's fsync covers many messages. A failing batch is re-run one unit per
transaction, so a bad unit fails only itself. Units must be safe to re-run (they only add rows).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from agentmx.services.runtime import Runtime

log = logging.getLogger("agentmx.db")

T = TypeVar("T")
Work = Callable[[AsyncSession], Awaitable[Any]]
MAX_BATCH = 64


@dataclass
class _Unit:
    work: Work
    done: asyncio.Future[Any]


class GroupCommitter:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.pending: list[_Unit] = []
        self.task: asyncio.Task[None] | None = None

    async def run(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """Run ``work`` in a shared transaction; returns once that transaction has committed."""
        unit = _Unit(work, asyncio.get_running_loop().create_future())
        self.pending.append(unit)
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._drain())
        # shield: one caller going away must not cancel a commit others wait on.
        result: T = await asyncio.shield(unit.done)
        return result

    async def _drain(self) -> None:
        while self.pending:
            batch, self.pending = self.pending[:MAX_BATCH], self.pending[MAX_BATCH:]
            try:
                results = await self._commit(batch)
            except Exception:
                if len(batch) > 1:
                    log.warning("group commit of %d units failed; retrying one by one", len(batch))
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

    async def _commit(self, batch: list[_Unit]) -> list[Any]:
        async with self.rt.db.transaction() as session:
            return [await unit.work(session) for unit in batch]


def _settle(unit: _Unit, outcome: Any) -> None:
    if unit.done.done():
        return
    if isinstance(outcome, BaseException):
        unit.done.set_exception(outcome)
    else:
        unit.done.set_result(outcome)


_committers: dict[int, GroupCommitter] = {}


def committer(rt: Runtime) -> GroupCommitter:
    """The runtime's committer (one per process and database)."""
    found = _committers.get(id(rt))
    if found is None or found.rt is not rt:
        found = _committers[id(rt)] = GroupCommitter(rt)
    return found
