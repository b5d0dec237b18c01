"""SQLAlchemy's synchronous pool calls from async code, on a reused greenlet.

SQLAlchemy's ``greenlet_spawn`` makes a new greenlet for every call, and Python a 16 KiB frame
stack for it (an mmap and a munmap): a hot read's checkout and return through it took about 29 us
of CPU, of which the pool's own work was 7 (bench/rest_read.py on PostgreSQL: two per request).
``call_sync`` runs the call on a greenlet kept from an earlier call, under the same contract as
``greenlet_spawn``: the call may ``await_`` (a ping, a reconnect), and this coroutine awaits that
for it. A greenlet is idle again once its call has returned or raised.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from greenlet import GreenletExit, getcurrent, greenlet

T = TypeVar("T")
MAX_IDLE = 4  # calls that await are rare and short; more idle greenlets would only hold memory


class _Returned:
    """A call's outcome, handed to call_sync (which empties it: an idle greenlet holds nothing)."""

    __slots__ = ("error", "value")

    def __init__(self, value: Any, error: BaseException | None) -> None:
        self.value = value
        self.error = error


def _call(fn: Callable[..., Any], args: tuple[Any, ...]) -> _Returned:
    try:
        return _Returned(fn(*args), None)
    except GreenletExit:
        raise  # the greenlet itself is being discarded (its thread ended mid-call): no caller to switch to
    except BaseException as exc:  # the caller raises it, as greenlet_spawn would
        return _Returned(None, exc)


class _Worker(greenlet):
    __sqlalchemy_greenlet_provider__ = True  # what SQLAlchemy's await_ checks before switching out

    def run(self, fn: Callable[..., Any] | None, args: tuple[Any, ...]) -> None:
        while fn is not None:  # None: not kept idle, so end (see _retire)
            returned = _call(fn, args)
            del fn, args  # not kept alive while idle
            fn, args = self.parent.switch(returned)


_local = threading.local()  # a greenlet can only be switched to from its own thread


def _idle() -> list[_Worker]:
    idle: list[_Worker] | None = getattr(_local, "idle", None)
    if idle is None:
        idle = _local.idle = []
    return idle


async def call_sync(fn: Callable[..., T], *args: Any) -> T:
    """``await greenlet_spawn(fn, *args)`` without a new greenlet per call."""
    idle = _idle()
    worker = idle.pop() if idle else _Worker()
    current = getcurrent()
    worker.parent = current  # await_ hands its awaitable to the parent: this coroutine
    worker.gr_context = current.gr_context  # the caller's context variables, as greenlet_spawn does
    out = worker.switch(fn, args)
    while not isinstance(out, _Returned):
        try:
            value = await out
        except BaseException:
            out = worker.throw(*sys.exc_info())
        else:
            out = worker.switch(value)
    value, error = out.value, out.error
    out.value = out.error = worker.gr_context = None  # an idle greenlet keeps no request's objects
    if len(idle) < MAX_IDLE:
        idle.append(worker)
    else:
        _retire(worker)
    if error is not None:
        raise error
    return value


def _retire(worker: _Worker) -> None:
    """End a greenlet not kept idle (calls that awaited together each had one).

    A suspended greenlet refers to itself from its own frame, a cycle the garbage collector cannot
    see into: merely dropped, it lived for ever with its saved stack (460 after a minute of
    bench/rest_read.py on PostgreSQL, 64 requests sharing 40 connections). Ending it is one switch.
    """
    worker.switch(None, ())
