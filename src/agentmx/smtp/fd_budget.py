"""Fit the SMTP connection cap to the process's open-file limit.

Each SMTP connection is a file descriptor. With the common soft RLIMIT_NOFILE of 1,024, a cap of
2,000 would let accept() fail with EMFILE for SMTP, HTTP and database sockets alike before any
421 is sent. So: raise the soft limit towards the hard one, then lower the cap if it still
does not fit beside a reserve for everything else.
"""

from __future__ import annotations

import contextlib
import logging
import resource

log = logging.getLogger("agentmx.smtp")

RESERVE = 512  # HTTP clients, the database pool, blob files, DNS and outbound SMTP sockets


def raise_soft_limit(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE to ``wanted`` (or the hard limit); returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def connection_cap(max_connections: int) -> int:
    """The cap to enforce: ``max_connections``, or less if the open-file limit cannot hold it."""
    soft = raise_soft_limit(max_connections + RESERVE)
    if soft == resource.RLIM_INFINITY or soft >= max_connections + RESERVE:
        return max_connections
    cap = max(1, soft - RESERVE)
    log.warning(
        "open-file limit %d cannot hold %d SMTP connections: capping them at %d", soft, max_connections, cap
    )
    return cap
