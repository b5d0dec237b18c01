"""Fit the SMTP and HTTP connection caps to the process's open-file limit.

Each connection is a file descriptor. With the common soft RLIMIT_NOFILE of 1,024, caps of
thousands would let accept() fail with EMFILE for SMTP, HTTP and database sockets alike before any
421 or 503 is sent. So: raise the soft limit towards the hard one, then lower both caps in
proportion if they still do not fit beside a reserve for everything else.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import resource

log = logging.getLogger("agentmx")

RESERVE = 512  # the database pool, blob files, DNS, outbound SMTP and webhook sockets (up to 24 + 128
# of them: jobs/runner.py's webhook slots, and the requests that hang past STALL without one)
# asyncio accepts every queued connection in one go, and the ones that newcomers displace are closed
# only on the next loop turn (newcomers simply turned away are reset at accept, http/listener.py): a
# busy loop can hold twice a listen queue of extra descriptors at once. uvicorn's default queue of
# 2,048 took a body-dribbling attack past the reserve (2,530 descriptors at a cap of 1,000; 1,552
# with 256). SMTP's is asyncio's 100.
HTTP_LISTEN_BACKLOG = RESERVE // 4


def raise_soft_limit(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE to ``wanted`` (or the hard limit); returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@functools.cache  # the SMTP listener and the HTTP server each ask; the warning is logged once
def connection_caps(smtp: int, http: int) -> tuple[int, int]:
    """The SMTP and HTTP caps to enforce: as asked, or less if the open-file limit cannot hold them."""
    wanted = smtp + http
    soft = raise_soft_limit(wanted + RESERVE)
    if soft == resource.RLIM_INFINITY or soft >= wanted + RESERVE:
        return smtp, http
    room = max(2, soft - RESERVE)
    smtp_cap = max(1, room * smtp // wanted)
    http_cap = max(1, room - smtp_cap)
    log.warning(
        "open-file limit %d cannot hold %d SMTP and %d HTTP connections: capping them at %d and %d",
        soft,
        smtp,
        http,
        smtp_cap,
        http_cap,
    )
    return smtp_cap, http_cap
