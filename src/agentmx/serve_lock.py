"""SQLite is for one serving process: a second ``agentmx serve`` on the same database file is refused.

Two servers on one SQLite file would both run its jobs, keep per-process caches that the other's
changes do not reach, and (an upgrade started beside a running server) migrate the schema under
the older one. The lock is the kernel's (flock): it ends with the process however that ends,
SIGKILL included. PostgreSQL takes no lock: several processes share one database by design.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from sqlalchemy.engine import make_url

from agentmx.settings import ConfigError


def hold(database_url: str) -> None:
    """Locks the SQLite database of ``database_url`` until this process ends (its descriptor is
    never closed), or raises ConfigError naming the process that holds it."""
    database = sqlite_file(database_url)
    if database is None:
        return
    lock = database.with_name(database.name + ".serve-lock")
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot create {lock}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise ConfigError(
            f"another agentmx serve (pid {holder}) uses {database}: SQLite is for one process"
            " (several processes share a PostgreSQL database)"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def sqlite_file(database_url: str) -> Path | None:
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database).expanduser().resolve()
