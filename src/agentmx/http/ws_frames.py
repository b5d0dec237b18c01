"""Pre-framed WebSocket writes (events/ws_frame.py frames an event once for every stream).

uvicorn's websockets protocol is extended to put a writer in the ASGI scope under
``FRAME_WRITER``; under another WebSocket implementation the key is absent and streams send
through ASGI as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from uvicorn.protocols.websockets.websockets_impl import WebSocketProtocol
from websockets.protocol import State

from agentmx.events.ws_frame import FrameWriter

FRAME_WRITER = "agentmx.frame_writer"


def frame_writer(scope: Mapping[str, Any]) -> FrameWriter | None:
    writer = scope.get("extensions", {}).get(FRAME_WRITER)
    return writer if callable(writer) else None


class FramedWebSocketProtocol(WebSocketProtocol):
    """uvicorn's websockets protocol, plus a direct writer for pre-framed messages."""

    async def run_asgi(self) -> None:
        extensions = cast(dict[str, Any], self.scope["extensions"])
        extensions[FRAME_WRITER] = self.write_framed
        await super().run_asgi()

    def write_framed(self, frame: bytes) -> bool:
        # The same checks websockets' own broadcast() makes, plus the write buffer's high-water mark.
        if self.state is not State.OPEN or self._fragmented_message_waiter is not None:
            return False
        transport = self.transport
        if transport.is_closing() or transport.get_write_buffer_size() >= self.write_limit:
            return False
        transport.write(frame)
        return True
