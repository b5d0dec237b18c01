"""Job kinds and their handlers. Feature modules register with ``@handler("kind")``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from agentmx.services.runtime import Runtime

# Payload key where the runner counts a job's consecutive unexpected failures (a handler raising
# anything but RetryAt). ``attempts`` counts every run, planned retries too: a delivery deferred nine
# times then failing once for a passing reason was given up as if it had failed ten times.
FAILURES = "unexpected_failures"


def failures(payload: dict[str, Any]) -> int:
    """This job's unexpected failures in a row, before the current run."""
    return int(payload.get(FAILURES, 0))


# Rows a handler wants inserted in the transaction that records its job's outcome, as
# (ORM class, row) pairs: one commit then covers both (not one for the handler and one for the runner).
Inserts = list[tuple[Any, dict[str, Any]]]


class RetryAt(Exception):  # noqa: N818 (a signal, not an error)
    """Raised by a handler to run the same job again at ``when`` (payload may be updated)."""

    def __init__(
        self,
        when: datetime,
        reason: str = "",
        payload: dict[str, Any] | None = None,
        inserts: Inserts | None = None,
    ) -> None:
        super().__init__(reason)
        self.when = when
        self.reason = reason
        self.payload = payload
        self.inserts = inserts or []


# handler(rt, payload, attempts) -> Inserts | None. Returning means done: the job row is deleted.
Handler = Callable[[Runtime, dict[str, Any], int], Awaitable[Inserts | None]]
HANDLERS: dict[str, Handler] = {}
# kind -> the payload key naming a job's lane (jobs/lanes.py): one receiver's jobs, capped together.
LANE_KEYS: dict[str, str] = {}


def handler(kind: str, *, lane: str | None = None) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        HANDLERS[kind] = fn
        if lane is not None:
            LANE_KEYS[kind] = lane
        return fn

    return register
