"""Giving up on a connection: a reset, not a close.

asyncio's close() waits for the transport's buffer to drain, which a client that stopped reading
never lets happen; abort() drops that buffer, but the kernel would still hold the bytes already in
the socket and retry them for minutes. With SO_LINGER 0 the close sends a RST and frees both.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

LINGER_ZERO = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a RST


def reset(transport: asyncio.Transport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ZERO)
    transport.abort()
