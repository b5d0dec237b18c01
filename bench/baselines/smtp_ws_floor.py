"""Baseline floor for inbound-to-WebSocket: aiosmtpd handler -> in-process websockets.broadcast().

Each accepted message is turned into an event frame of the same shape and about the same size as
agentmx's message.received (the decoded body is included) and broadcast to every connected client.
Usage: smtp_ws_floor.py SMTP_PORT WS_PORT
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
from email import policy
from email.parser import BytesParser
from typing import Any

from aiosmtpd.smtp import SMTP
from websockets.asyncio.server import ServerConnection, broadcast, serve

CLIENTS: set[ServerConnection] = set()
PARSER = BytesParser(policy=policy.default)


class Handler:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = PARSER.parsebytes(envelope.content)
        body = msg.get_body(("plain", "html"))
        frame = {
            "type": "event",
            "event_type": "message.received",
            "event_id": "evt_" + secrets.token_hex(12),
            "message": {
                "message_id": str(msg.get("Message-ID", "")),
                "subject": str(msg.get("Subject", "")),
                "from": str(msg.get("From", "")),
                "to": [str(msg.get("To", ""))],
                "text": body.get_content() if body is not None else "",
            },
        }
        broadcast(CLIENTS, json.dumps(frame))
        return "250 OK"


async def client(ws: ServerConnection) -> None:
    async for raw in ws:  # the subscribe frame, answered like agentmx does
        if isinstance(raw, str) and '"subscribe"' in raw:
            CLIENTS.add(ws)
            await ws.send('{"type": "subscribed"}')
    CLIENTS.discard(ws)


async def main(smtp_port: int, ws_port: int) -> None:
    loop = asyncio.get_running_loop()
    smtp = await loop.create_server(lambda: SMTP(Handler()), "127.0.0.1", smtp_port, backlog=256)
    async with smtp, serve(client, "127.0.0.1", ws_port, compression=None, max_queue=None):
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
