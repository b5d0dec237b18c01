"""Logging a background loop that keeps failing: the first failure whole, then a line a minute.

The job runner and the event hub poll every half second; while the database is down, a traceback
per poll buried everything else in the log. Its recovery is logged too, so an outage shows its
start, its length and its end.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

REPEAT_EVERY = 60.0  # seconds between the lines of a failure that goes on


class FailureLog:
    def __init__(self, log: logging.Logger, what: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.log = log
        self.what = what
        self.clock = clock
        self.failures = 0
        self.last_logged = 0.0

    def failed(self, exc: BaseException) -> None:
        """Call in the ``except`` block of a failed round."""
        self.failures += 1
        now = self.clock()
        if self.failures == 1:
            self.log.exception("%s failed", self.what)
            self.last_logged = now
        elif now - self.last_logged >= REPEAT_EVERY:
            self.log.error("%s still failing (%d times so far): %s", self.what, self.failures, exc)
            self.last_logged = now

    def succeeded(self) -> None:
        if self.failures:
            self.log.warning("%s works again after %d failures", self.what, self.failures)
            self.failures = 0
