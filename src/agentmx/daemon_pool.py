"""An executor whose worker threads are daemons: the interpreter does not wait for them at exit.

ThreadPoolExecutor joins its workers when the process exits, so a call that never returns (a
getaddrinfo stuck on a hung resolver) held the exit after SIGTERM until it gave up. Use this only
for calls whose result nobody needs once the process is stopping.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

_Work = tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class DaemonPool(Executor):
    """At most ``max_workers`` daemon threads, started as calls arrive and none is idle."""

    def __init__(self, max_workers: int, thread_name_prefix: str) -> None:
        self.max_workers = max_workers
        self.prefix = thread_name_prefix
        self._work: queue.SimpleQueue[_Work] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._lock = threading.Lock()
        self._threads = 0

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        future: Future[T] = Future()
        self._work.put((future, fn, args, kwargs))
        self._add_thread_unless_idle()
        return future

    def _add_thread_unless_idle(self) -> None:
        if self._idle.acquire(blocking=False):  # an idle worker takes it
            return
        with self._lock:
            if self._threads >= self.max_workers:
                return  # it waits in the queue for the first worker free
            self._threads += 1
            name = f"{self.prefix}_{self._threads}"
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def _run(self) -> None:
        while True:
            future, fn, args, kwargs = self._work.get()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as exc:  # the caller's to see, as ThreadPoolExecutor does
                    future.set_exception(exc)
            self._idle.release()
