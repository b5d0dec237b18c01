"""An event framed once for every WebSocket stream that sends it.

A server's frames are not masked, so an uncompressed text frame is the same bytes on every
connection. Sending it through ASGI would frame it (and, with permessage-deflate, compress it) once
per connection and wake one task per connection. Permessage-deflate lets any message go
uncompressed (RFC 7692 section 6: RSV1 unset), so the frame is valid whatever was negotiated.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

# Writes pre-framed messages (one, or several back to back) to a socket, all or none; False when it
# cannot now (closing, or the client reads slower than we write), and the stream then sends through
# ASGI, which waits for the buffer to drain.
FrameWriter = Callable[[bytes], bool]


def text_frame(text: str) -> bytes:
    """One final, unmasked, uncompressed text frame (RFC 6455 section 5.2)."""
    payload = text.encode()
    size = len(payload)
    if size < 126:
        return struct.pack("!BB", 0x81, size) + payload
    if size < 1 << 16:
        return struct.pack("!BBH", 0x81, 126, size) + payload
    return struct.pack("!BBQ", 0x81, 127, size) + payload
