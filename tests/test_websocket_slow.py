"""A WebSocket client that stops reading: the server holds a bounded amount for it, and a stream that
reads again gets every event once, in log order (its dropping at the ping timeout is in test_websocket)."""

from __future__ import annotations

import contextlib
import json
import secrets
import smtplib
import socket
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect

from agentmx.testing.server import ServerProcess

BODY = 100_000  # characters of text per message: each message.received event carries them


def rss_mb(server: ServerProcess) -> float:
    assert server.proc is not None
    with open(f"/proc/{server.proc.pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS"))
    return int(line.split()[1]) / 1024


@contextlib.contextmanager
def stalled_stream(server: ServerProcess, key: str) -> Iterator[ClientConnection]:
    """A subscribed stream that reads only when asked to."""
    sock = socket.create_connection(("127.0.0.1", server.http_port))
    with connect(
        server.ws_url + "/v0",
        sock=sock,
        additional_headers={"Authorization": f"Bearer {key}"},
        max_size=None,
        max_queue=2,  # the client library stops reading the socket after two unread frames
        ping_interval=None,  # its own pongs would wait behind the events it does not read
    ) as ws:
        ws.send(json.dumps({"type": "subscribe", "event_types": ["message.received"]}))
        assert json.loads(ws.recv(timeout=10))["type"] == "subscribed"
        yield ws


def send_large_mail(server: ServerProcess, inboxes: list[str], count: int) -> None:
    text = ("lorem ipsum dolor sit amet " * (BODY // 27 + 1))[:BODY]
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=120) as smtp:
        for n in range(count):
            msg = EmailMessage()
            msg["From"] = "alice@example.com"
            msg["To"] = inboxes[0]
            msg["Subject"] = f"large {n}"
            msg.set_content(f"{text} {n}")
            smtp.send_message(msg, from_addr="alice@example.com", to_addrs=inboxes)


def setup(
    fresh_server: Callable[..., ServerProcess], inboxes: int
) -> tuple[ServerProcess, str, list[str], Any]:
    server = fresh_server("sqlite").start()
    key = server.create_key()
    http = httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    made = [
        http.post("/v0/inboxes", json={"username": "w" + secrets.token_hex(4)}).json()["inbox_id"]
        for _ in range(inboxes)
    ]
    return server, key, made, http


def test_a_stream_that_stops_reading_holds_little_and_then_misses_nothing(
    fresh_server: Callable[..., ServerProcess],
) -> None:
    server, key, inboxes, http = setup(fresh_server, 20)
    poll = http.post("/v0/webhooks/polling", json={"client_id": "all", "event_types": ["message.received"]})
    token = poll.json()["token"]
    with stalled_stream(server, key) as ws:
        check_stalled(server, token, inboxes, ws)


def check_stalled(server: ServerProcess, token: str, inboxes: list[str], ws: ClientConnection) -> None:
    before = rss_mb(server)
    send_large_mail(server, inboxes, 15)  # 300 events of about 100 KB
    grown = rss_mb(server) - before
    # Every queued event used to be held until the client read (about 65 MB here; up to 5,000 bodies of
    # up to 1 MB each); now a few MB, and the stream catches up from the log when it reads again.
    assert grown < 40, f"server grew {grown:.0f} MB for one stream that stopped reading"

    logged: list[str] = []
    params: dict[str, Any] = {"limit": 500}
    while len(logged) < 300:
        page = httpx.get(
            server.base_url + "/v0/webhooks/polling/events",
            params=params,
            headers={"Authorization": f"Bearer {token}"},
        ).json()
        logged += [event["event_id"] for event in page["events"]]
        params["cursor"] = page["next_cursor"]
    received = [json.loads(ws.recv(timeout=30))["event_id"] for _ in range(300)]
    assert received == logged
