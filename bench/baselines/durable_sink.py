"""Baseline: aiosmtpd that parses each message and commits it to SQLite (WAL, synchronous=FULL) before the 250.

The "what durable Python ingest costs" reference from PERFORMANCE-RELIABILITY.md 1.2.
Usage: durable_sink.py PORT DB_PATH
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from email import policy
from email.parser import BytesParser
from typing import Any

from aiosmtpd.smtp import SMTP


class DurableHandler:
    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS m (id INTEGER PRIMARY KEY, message_id TEXT, subject TEXT, raw BLOB)"
        )
        self.parser = BytesParser(policy=policy.default)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = self.parser.parsebytes(envelope.content)
        self.db.execute(
            "INSERT INTO m (message_id, subject, raw) VALUES (?, ?, ?)",
            (str(msg.get("Message-ID", "")), str(msg.get("Subject", "")), envelope.content),
        )
        return "250 OK"


async def main(port: int, path: str) -> None:
    handler = DurableHandler(path)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(handler), "127.0.0.1", port, backlog=256)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
