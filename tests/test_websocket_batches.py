"""Events that commit together (an inbound group commit, a message to several inboxes) reach every
stream once, in log order, filtered, including a stream too slow to take them live (the hub then
writes each stream's share of a batch in one socket write, events/hub.py)."""

from __future__ import annotations

import json
import secrets
import smtplib
import socket
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from typing import Any

import httpx
import pytest
from agentmail.events.types.message_received_event import MessageReceivedEvent
from websockets.sync.client import connect

from conftest import Harness
from events_support import new_inbox
from test_websocket import next_frame, no_frame, subscribe

MESSAGES = 20  # sent at once: they commit in few transactions
BODY = 100_000  # characters of text each: the slow stream falls megabytes behind


def _send(harness: Harness, inboxes: list[str], n: int) -> None:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "alice@example.com", ", ".join(inboxes), f"batch {n}"
    msg.set_content(("lorem ipsum dolor sit amet " * (BODY // 27 + 1))[:BODY])
    with smtplib.SMTP("127.0.0.1", harness.server.smtp_port, timeout=60) as smtp:
        smtp.send_message(msg, from_addr="alice@example.com", to_addrs=inboxes)


def _logged(harness: Harness, token: str, count: int) -> list[dict[str, Any]]:
    """The log's message.received events, in log order, as a polling webhook reads them."""
    events: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 100}
    while len(events) < count:
        page = httpx.get(
            harness.server.base_url + "/v0/webhooks/polling/events",
            params=params,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        ).json()
        events += page["events"]
        params["cursor"] = page["next_cursor"]
    return events


def test_events_committed_together_reach_each_stream_once_in_order_and_filtered(harness: Harness) -> None:
    client = harness.client()
    inboxes = [new_inbox(client) for _ in range(4)]
    http = httpx.Client(
        base_url=harness.server.base_url, headers={"Authorization": f"Bearer {harness.api_key}"}
    )
    polling = http.post(
        "/v0/webhooks/polling",
        json={"client_id": "b" + secrets.token_hex(4), "event_types": ["message.received"]},
    )
    assert polling.status_code < 300, polling.text
    # The stalled stream: its client reads nothing until the end, with a small receive buffer.
    sock = socket.create_connection(("127.0.0.1", harness.server.http_port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    with (
        client.websockets.connect() as everything,
        client.websockets.connect() as only_first,
        connect(
            harness.server.ws_url + "/v0",
            sock=sock,
            additional_headers={"Authorization": f"Bearer {harness.api_key}"},
            max_size=None,
            max_queue=2,  # the client library stops reading the socket after two unread frames
            ping_interval=None,
        ) as stalled,
    ):
        subscribe(everything, inbox_ids=inboxes, event_types=["message.received"])
        subscribe(only_first, inbox_ids=inboxes[:1], event_types=["message.received"])
        stalled.send(
            json.dumps({"type": "subscribe", "inbox_ids": inboxes, "event_types": ["message.received"]})
        )
        assert json.loads(stalled.recv(timeout=10))["type"] == "subscribed"

        with ThreadPoolExecutor(MESSAGES) as pool:
            list(pool.map(lambda n: _send(harness, inboxes, n), range(MESSAGES)))

        logged = _logged(harness, polling.json()["token"], MESSAGES * len(inboxes))
        ids = [event["event_id"] for event in logged]
        assert len(set(ids)) == MESSAGES * len(inboxes)
        first_ids = [event["event_id"] for event in logged if event["message"]["inbox_id"] == inboxes[0]]
        assert len(first_ids) == MESSAGES

        def received(socket: Any, count: int) -> list[str]:
            frames = [next_frame(socket, 30) for _ in range(count)]
            assert all(isinstance(frame, MessageReceivedEvent) for frame in frames), frames
            return [frame.event_id for frame in frames]

        assert received(everything, len(ids)) == ids
        assert received(only_first, len(first_ids)) == first_ids
        assert [json.loads(stalled.recv(timeout=30))["event_id"] for _ in ids] == ids
        no_frame(everything, 0.5)
        no_frame(only_first, 0.1)
        with pytest.raises(TimeoutError):
            stalled.recv(timeout=0.1)
