"""db.sync_calls.call_sync keeps greenlet_spawn's contract on a reused greenlet: the call may await
(SQLAlchemy's await_only), its errors and a cancellation reach the caller, calls that await overlap, and
context variables are the caller's."""

from __future__ import annotations

import asyncio
import contextvars
import gc

import pytest
from greenlet import greenlet
from sqlalchemy.util import await_only

from agentmx.db.sync_calls import MAX_IDLE, call_sync

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")


def _sleeps(seconds: float) -> float:
    await_only(asyncio.sleep(seconds))
    return seconds


def _fails_after_awaiting() -> None:
    await_only(asyncio.sleep(0))
    raise KeyError("from the call")


def _sets_var() -> str:
    VAR.set("set in the call")
    return VAR.get()


def test_results_errors_and_overlapping_awaits() -> None:
    async def main() -> None:
        assert await call_sync(len, "abc") == 3
        with pytest.raises(KeyError, match="from the call"):
            await call_sync(_fails_after_awaiting)
        delays = [0.02 * i for i in range(8)]
        assert await asyncio.gather(*(call_sync(_sleeps, d) for d in reversed(delays))) == delays[::-1]
        # A call inside a call (through await_only) gets a greenlet of its own.
        assert await call_sync(lambda: await_only(call_sync(_sleeps, 0.01))) == 0.01

    asyncio.run(main())


def test_cancellation_reaches_the_call_and_the_greenlet_serves_again() -> None:
    async def main() -> None:
        task = asyncio.ensure_future(call_sync(_sleeps, 30))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await call_sync(_sleeps, 0) == 0

    asyncio.run(main())


def test_context_variables_are_the_callers() -> None:
    async def main() -> None:
        VAR.set("the caller's")
        assert await call_sync(VAR.get) == "the caller's"
        assert await call_sync(_sets_var) == "set in the call"
        assert VAR.get() == "set in the call"  # as with greenlet_spawn: the caller's own context

    asyncio.run(main())


def _live_greenlets() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, greenlet) and o and not o.dead)


def test_calls_that_overlap_leave_no_greenlets_behind() -> None:
    """Pool checkouts wait together when requests outnumber connections; each waits on a greenlet of
    its own. Past the few kept idle, those greenlets must end: a suspended greenlet refers to itself
    from its own frame, a cycle the collector cannot see, so one merely dropped lived for ever."""

    async def main() -> None:
        await call_sync(_sleeps, 0)
        before = _live_greenlets()
        for _ in range(5):
            await asyncio.gather(*(call_sync(_sleeps, 0.001) for _ in range(30)))
        assert _live_greenlets() - before <= MAX_IDLE

    asyncio.run(main())
