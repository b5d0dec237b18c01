"""Helpers for the event tests: a real webhook receiver on loopback, inbound mail over SMTP, and
writing an event straight into a server's database (for the time the server is down)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import smtplib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

from agentmail import AgentMail
from agentmail.inboxes.types import CreateInboxRequest
from svix.webhooks import Webhook as SvixWebhook

from agentmx.blobs import BlobStore
from agentmx.db.engine import Database
from agentmx.db.models import Event
from agentmx.services.events import record_event
from agentmx.services.runtime import Runtime
from agentmx.settings import Settings
from agentmx.testing.server import ServerProcess

T = TypeVar("T")


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes
    at: float


class Receiver:
    """An HTTP server that records every POST. ``status`` decides the answer for the n-th request."""

    def __init__(self, status: Callable[[int], int] = lambda n: 200) -> None:
        self.status = status
        self.deliveries: list[Delivery] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                with receiver.lock:
                    n = len(receiver.deliveries)
                    receiver.deliveries.append(
                        Delivery({k.lower(): v for k, v in self.headers.items()}, body, time.monotonic())
                    )
                code = receiver.status(n)
                self.send_response(code)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait(self, count: int, timeout: float = 20.0) -> list[Delivery]:
        wait_for(lambda: len(self.deliveries) >= count, timeout)
        with self.lock:
            return list(self.deliveries)


class ScriptedReceiver:
    """A raw TCP receiver for answers no HTTP server library gives: it reads each request and hands the
    socket to ``answer`` (which writes whatever it likes, then the connection is closed)."""

    def __init__(self, answer: Callable[[socket.socket], None]) -> None:
        self.answer = answer
        self.requests: list[tuple[str, float]] = []  # (request target, when)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}{path}"

    def _accept(self) -> None:
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as stream:
            request_line = stream.readline().decode("latin-1")
            length = 0
            while (line := stream.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            stream.read(length)
            self.requests.append((request_line.split(" ")[1], time.monotonic()))
            with contextlib.suppress(OSError):
                self.answer(conn)

    def close(self) -> None:
        self.closed = True
        self.sock.close()


def verify(secret: str, delivery: Delivery) -> Any:
    """Verify with the svix library, exactly as a receiver would (raises if it does not verify)."""
    SvixWebhook(secret).verify(delivery.body, delivery.headers)
    return json.loads(delivery.body)


def wait_for(fn: Callable[[], T | None], timeout: float = 20.0, interval: float = 0.05) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(interval)


def new_inbox(client: AgentMail, pod_id: str | None = None) -> str:
    username = "e" + secrets.token_hex(5)
    if pod_id:
        return client.pods.inboxes.create(pod_id, username=username).inbox_id
    return client.inboxes.create(request=CreateInboxRequest(username=username)).inbox_id


def send_mail(server: ServerProcess, to: str, subject: str = "Hello events") -> str:
    """Deliver one message to ``to`` over real SMTP; returns its Message-ID."""
    msg = EmailMessage()
    msg["From"] = "Alice <alice@example.com>"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = make_msgid(domain="example.com")
    msg.set_content("Body of " + subject)
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as smtp:
        smtp.send_message(msg, from_addr="alice@example.com", to_addrs=[to])
    return str(msg["Message-ID"])


def emit_event(
    server: ServerProcess, *, organization_id: str, inbox_id: str, pod_id: str, subject: str
) -> str:
    """Write a message.sent event into the server's database through the event service (server may be down)."""

    async def run() -> str:
        settings = Settings.model_validate(
            {"data_dir": server.data_dir, "database_url": server.database_url or ""}
        )
        db = Database(settings.effective_database_url)
        rt = Runtime(settings=settings, db=db, blobs=BlobStore(server.data_dir / "blobs"))
        try:
            async with db.transaction() as s:
                row = await record_event(
                    s,
                    rt,
                    event_type="message.sent",
                    organization_id=organization_id,
                    pod_id=pod_id,
                    inbox_id=inbox_id,
                    payload={
                        "send": {
                            "inbox_id": inbox_id,
                            "thread_id": "thd_" + secrets.token_hex(6),
                            "message_id": f"<{secrets.token_hex(6)}@{subject}>",
                            "timestamp": "2026-01-01T00:00:00Z",
                            "recipients": ["bob@example.com"],
                        }
                    },
                )
            return row.event_id
        finally:
            await db.dispose()

    return asyncio.run(run())


def event_row(seq: int, inbox_id: str = "a@example.com") -> Event:
    """A message.received row of organization "org", as the hub is offered one at commit."""
    return Event(
        seq=seq,
        event_id=f"evt_{seq}",
        event_type="message.received",
        organization_id="org",
        pod_id=None,
        inbox_id=inbox_id,
        body={"seq": seq},
    )
