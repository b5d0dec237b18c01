"""Listening sockets bound before anything serves them: the HTTP server's, and the SMTP port that
the front-end processes accept on."""

from __future__ import annotations

import asyncio
import os
import socket

from agentmx.settings import cannot_listen

DEFAULT_BACKLOG = 100  # asyncio's, and aiosmtpd's


async def bound_sockets(
    host: str, port: int, what: str, backlog: int = DEFAULT_BACKLOG
) -> list[socket.socket]:
    """``host:port`` bound and listening (every address a name resolves to), not yet served, or the
    command stopped with why not (a port in use or privileged, an address this host lacks)."""
    loop = asyncio.get_running_loop()
    try:
        server = await loop.create_server(
            asyncio.Protocol, host=host, port=port, backlog=backlog, start_serving=False
        )
    except OSError as exc:
        raise cannot_listen(what, host, port, exc) from None
    # Copies of the descriptors outlive the asyncio server that made them, and keep the port bound.
    sockets = [socket.socket(fileno=os.dup(sock.fileno())) for sock in server.sockets]
    server.close()
    return sockets
