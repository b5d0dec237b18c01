"""Database failures that say "try again", not "this request is wrong".

A transaction chosen as a deadlock victim, one that lost a serialization check, a connection the
server closed (restart, failover, an administrator), a full disk, a pool with no free connection:
the whole transaction was rolled back, nothing of it was kept, and the same request can succeed
a moment later. The HTTP edge answers these with 503 (which clients, the SDK among them, retry), not 500.
"""

from __future__ import annotations

import sqlite3

from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

# PostgreSQL SQLSTATEs: serialization_failure, deadlock_detected, lock_not_available,
# admin_shutdown, crash_shutdown, cannot_connect_now; class 08 (connection exceptions) and class 53
# (insufficient resources: disk full, out of memory, too many connections).
RETRYABLE_SQLSTATES = {"40001", "40P01", "55P03", "57P01", "57P02", "57P03"}
RETRYABLE_CLASSES = ("08", "53")
SQLITE_RETRYABLE = ("database is locked", "database table is locked", "database or disk is full")


def retryable(exc: BaseException) -> bool:
    if isinstance(exc, PoolTimeout):
        return True
    # Not wrapped: the driver's own error, as the hot reads' raw connections raise it
    # (db/driver_reads): a PostgreSQL with too many clients was a 500 there, a 503 elsewhere.
    orig: BaseException | None = exc
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        orig = exc.orig
    state = getattr(orig, "sqlstate", None)
    if isinstance(state, str) and (state in RETRYABLE_SQLSTATES or state.startswith(RETRYABLE_CLASSES)):
        return True
    if isinstance(orig, sqlite3.OperationalError):
        return str(orig).startswith(SQLITE_RETRYABLE)
    return False
