"""The HTTP listening socket: newcomers the guard would turn away are reset at accept().

Under a slowloris at the connection cap, newcomers are turned away by the thousand a second. Let
through, each cost asyncio a socket object, a task and a transport, and uvicorn its protocol (parser
and state), before connection_made reset it: about 150 us of the loop's CPU each. Here the guard's
rule is asked with the address accept() returns, and a newcomer it turns away is reset with no
Python object made for it. One let through counts in the guard as pending until its connection_made
runs (a loop turn or two later), so that one accept batch, and the next, do not let through more than
the cap has room for: each newcomer too many would cost the whole 150 us before being reset.
connection_made asks the guard again (http/guard.py), with the state of that moment, and displaces
the crowd's oldest for a newcomer from a less crowded address.

asyncio's event loop accepts through this object's accept(). uvloop accepts in libuv, so there the
reset happens in connection_made, as before.
"""

from __future__ import annotations

import _socket
import socket
from typing import Any

from agentmx.http.guard import HttpGuard
from agentmx.http.reset import LINGER_ZERO

# Newcomers reset in one of asyncio's accept batches at most: past it the loop runs its other work
# and comes back on its next turn (the queue is still readable).
TURN_AWAY_PER_BATCH = 256


class GuardedListener(socket.socket):
    guard: HttpGuard
    kind: tuple[int, int, int]  # family, type, proto as ints: the properties build enums on each read
    turned_away = 0  # in the current batch

    @classmethod
    def wrap(cls, sock: socket.socket, guard: HttpGuard) -> GuardedListener:
        """``sock``'s descriptor in a GuardedListener (``sock`` is left detached)."""
        listener = cls(sock.family, sock.type, sock.proto, fileno=sock.detach())
        listener.guard = guard
        listener.kind = (int(listener.family), int(listener.type), listener.proto)
        return listener

    def accept(self) -> tuple[socket.socket, Any]:
        # asyncio calls accept() until BlockingIOError (the queue is empty) ends its batch.
        try:
            while True:
                fd, addr = self._accept()  # type: ignore[attr-defined]
                if not self.guard.turns_away(addr[0], fd):
                    return self.admitted(fd), addr
                self.reset(fd)
                self.turned_away += 1
                if self.turned_away >= TURN_AWAY_PER_BATCH:
                    raise BlockingIOError
        except BlockingIOError:
            self.turned_away = 0
            raise

    def admitted(self, fd: int) -> socket.socket:
        # As socket.accept() does.
        sock = socket.socket(self.family, self.type, self.proto, fileno=fd)
        if socket.getdefaulttimeout() is None and self.gettimeout():
            sock.setblocking(True)
        return sock

    def reset(self, fd: int) -> None:
        sock = _socket.socket(*self.kind, fd)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ZERO)
        except OSError:
            pass  # the client reset it first: closed all the same
        sock.close()
