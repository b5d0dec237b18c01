"""What one WebSocket client may cost the server: ids per subscribe, frames it sends without reading
the answers, and many clients resuming over large events at once."""

from __future__ import annotations

import asyncio
import json
import smtplib
import time
from collections.abc import Callable
from email.message import EmailMessage

import httpx
import websockets
from agentmail.websockets.types import Error, Subscribe

from agentmx.testing.server import ServerProcess
from conftest import Harness
from events_support import new_inbox, send_mail
from test_websocket import next_frame, raw_stream, subscribe, text_frame
from test_websocket_slow import rss_mb

BODY = 100_000  # characters of text per large message


def test_a_subscribe_listing_too_many_ids_is_refused_and_copies_count_once(harness: Harness) -> None:
    """Each listed id was looked up in turn, and a cached one without yielding: 200,000 copies of one
    id held the whole process, every request and stream, for minutes."""
    client = harness.client()
    inbox = new_inbox(client)
    with client.websockets.connect() as socket:
        socket.send_subscribe(Subscribe(inbox_ids=[f"n{n}@example.com" for n in range(101)]))
        error = next_frame(socket)
        assert isinstance(error, Error) and error.name == "ValidationError", error
        assert "at most 100" in error.message
        start = time.monotonic()
        ack = subscribe(socket, inbox_ids=[inbox] * 20_000)
        assert ack.inbox_ids == [inbox]
        assert time.monotonic() - start < 5
        send_mail(harness.server, inbox, subject="still subscribed")
        assert next_frame(socket).message.subject == "still subscribed"


def test_a_client_frame_over_a_mebibyte_closes_the_socket(harness: Harness) -> None:
    """uvicorn took frames of 16 MiB, each parsed on the event loop every client shares."""
    client = harness.client()
    inbox = new_inbox(client)

    async def oversized() -> int | None:
        url = harness.server.ws_url + "/v0?api_key=" + harness.api_key
        async with websockets.connect(url, max_size=None) as ws:
            await ws.send(json.dumps({"type": "subscribe", "inbox_ids": [inbox] * 60_000}))  # ~2 MB
            try:
                while True:
                    await asyncio.wait_for(ws.recv(), timeout=30)
            except websockets.ConnectionClosed as closed:
                return closed.rcvd.code if closed.rcvd else None

    assert asyncio.run(oversized()) == 1009
    assert httpx.get(harness.server.base_url + "/health", timeout=30).status_code == 200


def _send_large_mail(server: ServerProcess, inbox: str, count: int, tag: str) -> None:
    text = ("lorem ipsum dolor sit amet " * (BODY // 27 + 1))[:BODY]
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=120) as smtp:
        for n in range(count):
            msg = EmailMessage()
            msg["From"], msg["To"], msg["Subject"] = "alice@example.com", inbox, f"large {tag} {n}"
            msg.set_content(f"{text} {tag} {n}")
            smtp.send_message(msg)


def _first_event(harness: Harness, inbox: str) -> str:
    with harness.client().websockets.connect() as socket:
        subscribe(socket, inbox_ids=[inbox])
        send_mail(harness.server, inbox, subject="first")
        return str(next_frame(socket).event_id)


def test_frames_sent_without_reading_the_answers_are_not_kept(
    fresh_server: Callable[..., ServerProcess],
) -> None:
    """Every frame was parsed and queued while the stream's task waited on a client that did not read:
    memory grew at the speed the client sent, until the keepalive timeout."""
    server = fresh_server("sqlite", env={"AGENTMX_WS_PING_INTERVAL": "60"}).start()
    harness = Harness(server, "sqlite")
    inbox = new_inbox(harness.client())
    after = _first_event(harness, inbox)
    _send_large_mail(server, inbox, 30, "stall")
    sock = raw_stream(server, harness.api_key)
    try:
        resume = {"type": "subscribe", "inbox_ids": [inbox], "after_event_id": after}
        sock.sendall(text_frame(json.dumps(resume).encode()))
        time.sleep(1)  # the replay fills the socket and waits for a reader that never comes
        before = rss_mb(server)
        # About 1 MB of JSON each, some 7 MB once parsed.
        padded = json.dumps({"type": "subscribe", "padding": ["xxxxxxxx"] * 100_000}).encode()
        sock.settimeout(1.0)
        sent = 0
        try:
            for _ in range(100):
                sock.sendall(text_frame(padded))
                sent += 1
        except TimeoutError:
            pass  # the server stopped reading: that is the point
        time.sleep(1)
        grown = rss_mb(server) - before
        assert grown < 100, f"server grew {grown:.0f} MB after {sent} unread-answer frames"
    finally:
        sock.close()
    assert httpx.get(server.base_url + "/health", timeout=10).status_code == 200


def test_many_clients_resuming_over_large_events_hold_little(
    fresh_server: Callable[..., ServerProcess],
) -> None:
    """A catch-up loaded up to 500 whole events per client before sending the first: with 100 KB
    events and 20 clients resuming at once, hundreds of MB. Now a few bodies per client."""
    server = fresh_server("sqlite").start()
    harness = Harness(server, "sqlite")
    inbox = new_inbox(harness.client())
    after = _first_event(harness, inbox)
    _send_large_mail(server, inbox, 100, "resume")
    before = rss_mb(server)
    peak = [before]

    async def client() -> list[str]:
        async with websockets.connect(
            server.ws_url + "/v0",
            additional_headers={"Authorization": f"Bearer {harness.api_key}"},
            max_size=None,
            max_queue=2,
        ) as ws:
            await ws.send(json.dumps({"type": "subscribe", "inbox_ids": [inbox], "after_event_id": after}))
            assert json.loads(await ws.recv())["type"] == "subscribed"
            return [json.loads(await ws.recv())["event_type"] for _ in range(100)]

    async def run() -> list[list[str]]:
        async def sample() -> None:
            while True:
                peak[0] = max(peak[0], rss_mb(server))
                await asyncio.sleep(0.05)

        sampler = asyncio.create_task(sample())
        try:
            return await asyncio.wait_for(asyncio.gather(*[client() for _ in range(20)]), 120)
        finally:
            sampler.cancel()

    got = asyncio.run(run())
    assert all(types == ["message.received"] * 100 for types in got)
    grown = peak[0] - before
    assert grown < 80, f"server grew {grown:.0f} MB for 20 clients resuming"
