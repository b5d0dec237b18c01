"""Pre-framed WebSocket writes (events/ws_frame.py frames an event once for every stream).

uvicorn's websockets-sansio protocol (its default) is extended to put a writer in the ASGI scope
under ``FRAME_WRITER``; under another WebSocket implementation the key is absent and streams send
through ASGI as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

from agentmx.events.ws_frame import FrameWriter
from agentmx.http.reset import reset

FRAME_WRITER = "agentmx.frame_writer"
# A client frame larger is refused (close 1009). uvicorn's default is 16 MiB, each parsed on the event
# loop (0.1-0.3 s at that size, for every client); a subscribe at its 100-id caps is under 70 KB.
MAX_CLIENT_FRAME = 1024 * 1024


def frame_writer(scope: Mapping[str, Any]) -> FrameWriter | None:
    writer = (scope.get("extensions") or {}).get(FRAME_WRITER)
    return writer if callable(writer) else None


class FramedWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol, plus a direct writer for pre-framed messages."""

    async def run_asgi(self) -> None:
        extensions = cast(dict[str, Any], self.scope["extensions"])
        extensions[FRAME_WRITER] = self.write_framed
        app = self.app

        async def app_then_settle(scope: Any, receive: Any, send: Any) -> None:
            await app(scope, receive, send)
            if self.initial_response is not None and self.close_sent:
                # A refusal (401, 429) sent in full as an HTTP response ends the handshake too;
                # uvicorn would log each one as an ERROR ("returned without completing handshake").
                self.handshake_complete = True

        self.app = app_then_settle
        await super().run_asgi()

    def keepalive_timeout(self) -> None:
        super().keepalive_timeout()
        # uvicorn closes the transport, and asyncio's close waits for the write buffer to drain: a
        # client that stopped reading (which is why its pong never came) kept its socket, stream and
        # queued events for ever. Nothing more will reach it: drop them now.
        if not self.disconnected and self.transport.get_write_buffer_size():
            reset(self.transport)

    def write_framed(self, frame: bytes) -> bool:
        # Open, accepted, not closing, and the transport below its high-water mark (uvicorn's
        # own sends wait on ``writable`` then). uvicorn drains the sans-I/O connection's output
        # right after each send, so nothing of its own is pending ahead of this frame.
        if (
            not self.handshake_complete
            or self.close_sent
            or self.disconnected
            or self.initial_response is not None
            or not self.writable.is_set()
            or self.conn.state is not State.OPEN
            or self.transport.is_closing()
        ):
            return False
        self.transport.write(frame)
        return True
