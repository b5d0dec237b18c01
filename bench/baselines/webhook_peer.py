"""Baseline: a bare httpx.AsyncClient POST loop that signs like Standard Webhooks and posts N events.

Usage: webhook_peer.py URL SECRET COUNT CONCURRENCY
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from datetime import UTC, datetime

import httpx
from standardwebhooks.webhooks import Webhook


async def main(url: str, secret: str, count: int, concurrency: int) -> None:
    signer = Webhook(secret)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(count):
        queue.put_nowait(n)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            n = queue.get_nowait()
            body = json.dumps({"type": "event", "event_type": "message.received", "event_id": f"evt_{n}",
                               "message": {"subject": f"bench message {n}", "text": "x" * 2000}})  # fmt: skip
            msg_id, now = f"msg_{n}", datetime.now(UTC)
            sig = signer.sign(msg_id, now, body)
            headers = {"content-type": "application/json", "webhook-id": msg_id,
                       "webhook-timestamp": str(int(now.timestamp())), "webhook-signature": sig}  # fmt: skip
            await client.post(url, content=body, headers=headers)

    async with httpx.AsyncClient(timeout=15) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        print(f"{count / (time.perf_counter() - t0):.1f}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
