"""Several agentmx processes on one PostgreSQL database (README: "several processes sharing one
PostgreSQL database"). Each test changes something through one process and looks at the other.

The processes keep their caches for a minute here (AGENTMX_CACHE_TTL): a change that reaches the
other process before that came by its NOTIFY, not by the cache running out.
"""

from __future__ import annotations

import asyncio
import json
import smtplib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
import httpx
import pytest
from agentmail import AgentMail
from agentmail.core.api_error import ApiError
from agentmail.core.unchecked_base_model import construct_type
from agentmail.environment import AgentMailEnvironment
from agentmail.websockets.socket_client import WebsocketsSocketClientResponse
from agentmail.websockets.types import Subscribe, Subscribed

from agentmx.testing import postgres
from agentmx.testing.server import ServerProcess
from conftest import NO_RETRY, Harness, _postgres_or_skip
from events_support import Receiver, new_inbox, send_mail, wait_for
from mail_support import make_message

LONG_CACHE = {"AGENTMX_CACHE_TTL": "60"}
PROMPTLY = 10.0  # seconds: far below the caches' 60, far above a NOTIFY's way on a loaded machine


class Pair:
    """Process ``a`` (SMTP in the server process) and ``b`` (with an SMTP front end, whose RCPT
    cache must be cleared too), one database, one blob folder, one organization's key."""

    def __init__(self, a: ServerProcess, b: ServerProcess) -> None:
        self.a, self.b = a, b
        self.key = a.create_key()

    def client(self, server: ServerProcess, key: str | None = None) -> AgentMail:
        env = AgentMailEnvironment(http=server.base_url, websockets=server.ws_url)
        return AgentMail(api_key=key or self.key, environment=env)

    def http(self, server: ServerProcess, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key or self.key}"}
        return httpx.Client(base_url=server.base_url, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    _postgres_or_skip()
    url = postgres.create_database()
    shared = tmp_path_factory.mktemp("multi")
    a = ServerProcess(shared, database_url=url, env=LONG_CACHE)
    b = ServerProcess(shared, database_url=url, env=LONG_CACHE | {"AGENTMX_SMTP_WORKERS": "1"})
    try:
        a.start()
        b.start()
        yield Pair(a, b)
    finally:
        a.kill()
        b.kill()
        postgres.drop_database(url)


def _status(client: httpx.Client) -> int:
    return client.get("/v0/inboxes").status_code


def test_a_key_narrowed_or_deleted_on_one_process_stops_working_on_the_other(pair: Pair) -> None:
    admin = pair.client(pair.a)
    key = admin.api_keys.create(request={"name": "revoked-elsewhere"})
    on_b = pair.http(pair.b, key.api_key)
    assert _status(on_b) == 200  # cached by b now
    admin.api_keys.update(key.api_key_id, permissions={"inbox_read": False})
    wait_for(lambda: _status(on_b) == 403, timeout=PROMPTLY)
    admin.api_keys.delete(key.api_key_id)
    wait_for(lambda: _status(on_b) == 401, timeout=PROMPTLY)


def _rcpt(server: ServerProcess, address: str) -> int:
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=10) as smtp:
        smtp.ehlo()
        smtp.mail("someone@example.com")
        return int(smtp.rcpt(address)[0])


def test_an_inbox_deleted_on_one_process_stops_receiving_on_the_other(pair: Pair) -> None:
    """b's front end answers RCPT from its own cache: it is cleared too."""
    admin = pair.client(pair.a)
    inbox = admin.inboxes.create().inbox_id
    assert _rcpt(pair.b, inbox) == 250
    admin.inboxes.delete(inbox)
    wait_for(lambda: _rcpt(pair.b, inbox) == 550, timeout=PROMPTLY)


def test_a_block_entry_added_on_one_process_applies_on_the_other(pair: Pair) -> None:
    admin = pair.client(pair.a)
    inbox = admin.inboxes.create().inbox_id
    sender = f"pest-{inbox.split('@')[0]}@example.org"

    def delivered_blocked() -> bool:
        with smtplib.SMTP("127.0.0.1", pair.b.smtp_port, timeout=10) as smtp:
            smtp.sendmail(sender, [inbox], make_message(inbox, sender=sender).as_bytes())
        newest = admin.inboxes.messages.list(inbox, include_blocked=True).messages[0]
        return "blocked" in newest.labels

    assert not delivered_blocked()  # b has looked up the inbox's lists (none)
    admin.lists.create("receive", "block", entry=sender)
    wait_for(delivered_blocked, timeout=PROMPTLY)


def test_a_dropped_listen_connection_is_replaced_and_misses_nothing(pair: Pair) -> None:
    """A change committed while b's LISTEN connection is down still reaches it: b clears its
    caches when it listens again (the NOTIFY sent meanwhile is lost)."""
    admin = pair.client(pair.a)
    key = admin.api_keys.create(request={"name": "revoked-while-deaf"})
    on_b = pair.http(pair.b, key.api_key)
    assert _status(on_b) == 200
    pid = _listen_backend(pair)
    _sql(pair, f"SELECT pg_terminate_backend({pid})")
    admin.api_keys.delete(key.api_key_id)
    wait_for(lambda: _status(on_b) == 401, timeout=PROMPTLY)
    wait_for(lambda: _listening_backends(pair) == 2, timeout=PROMPTLY)


def _listening_backends(pair: Pair) -> int:
    sql = (
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name LIKE 'agentmx listen %'"
    )
    return int(_sql(pair, sql))


def _listen_backend(pair: Pair) -> int:
    """The backend of b's LISTEN connection (db/listen.py names it after its process)."""
    assert pair.b.proc is not None
    name = f"agentmx listen {pair.b.proc.pid}"
    return int(_sql(pair, f"SELECT pid FROM pg_stat_activity WHERE application_name = '{name}'"))


def _sql(pair: Pair, sql: str) -> Any:
    async def run() -> Any:
        conn = await asyncpg.connect(pair.a.database_url)
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    return asyncio.run(run())


def test_an_idempotency_key_used_on_one_process_replays_on_the_other(pair: Pair) -> None:
    one, two = pair.client(pair.a), pair.client(pair.b)
    inbox = one.inboxes.create().inbox_id
    options: Any = {"additional_headers": {"Idempotency-Key": f"multi-{inbox.split('@')[0]}"}}
    first = one.inboxes.messages.send(inbox, to=inbox, text="once", request_options=options)
    again = two.inboxes.messages.send(inbox, to=inbox, text="once", request_options=options)
    assert (again.message_id, again.thread_id) == (first.message_id, first.thread_id)
    with pytest.raises(ApiError) as other:
        two.inboxes.messages.send(inbox, to=inbox, text="other", request_options=options | NO_RETRY)
    assert other.value.status_code == 409
    sent = [m for m in one.inboxes.messages.list(inbox).messages if "sent" in m.labels]
    assert len(sent) == 1


def test_a_delivery_claimed_by_a_killed_process_is_run_by_another_after_its_lease(
    fresh_server: Callable[..., ServerProcess],
) -> None:
    """SIGKILL leaves the claim in the database (no hand-back): the other process runs the job once
    the claim's lease (2 s here) has lapsed, and the job is gone once it has."""
    _postgres_or_skip()
    gate = threading.Event()

    def answer(n: int) -> int:
        if n == 0:  # the killed process's attempt: held until the end
            gate.wait(60)
        return 200

    receiver = Receiver(status=answer)
    try:
        env = {"AGENTMX_JOB_LEASE": "2"}
        first = fresh_server("postgres", env=env).start()
        second = fresh_server(database_url=first.database_url, env=env)
        harness = Harness(first, "postgres")
        inbox = new_inbox(harness.client())
        harness.client().inboxes.webhooks.create(inbox, url=receiver.url, event_types=["message.received"])
        send_mail(first, inbox, subject="claimed, then killed")
        receiver.wait(1)  # the first process is in the middle of the delivery
        first.kill()
        second.start()
        held, retried = receiver.wait(2, timeout=30)[:2]
        assert json.loads(retried.body)["event_id"] == json.loads(held.body)["event_id"]
        jobs = "SELECT count(*) FROM jobs WHERE kind = 'deliver_webhook'"
        wait_for(lambda: harness.count_rows(jobs) == 0, timeout=PROMPTLY)
    finally:
        gate.set()
        receiver.close()


def _next(socket: Any) -> Any:
    """The next frame, parsed as the SDK parses it (a missing one fails the test, not hangs it)."""
    raw = socket._websocket.recv(timeout=PROMPTLY)
    return construct_type(type_=WebsocketsSocketClientResponse, object_=json.loads(raw))  # type: ignore[arg-type]


def test_a_stream_on_one_process_follows_mail_through_the_other_and_resumes_there(pair: Pair) -> None:
    """Events committed by a reach b's stream (NOTIFY), in log order; resuming on a after one of them
    replays the rest, each once."""
    one, two = pair.client(pair.a), pair.client(pair.b)
    inbox = one.inboxes.create().inbox_id
    subjects = [f"through a {i}" for i in range(4)]
    with two.websockets.connect() as socket:
        socket.send_subscribe(Subscribe(inbox_ids=[inbox], event_types=["message.received"]))
        assert isinstance(_next(socket), Subscribed)
        for subject in subjects:
            send_mail(pair.a, inbox, subject=subject)
        seen = [_next(socket) for _ in subjects]
    assert [event.message.subject for event in seen] == subjects
    resume: Any = {"after_event_id": seen[0].event_id}  # agentmx extension; the SDK passes it on
    with one.websockets.connect() as socket:
        socket.send_subscribe(Subscribe(inbox_ids=[inbox], event_types=["message.received"], **resume))
        assert isinstance(_next(socket), Subscribed)
        replayed = [_next(socket) for _ in subjects[1:]]
    assert [event.event_id for event in replayed] == [event.event_id for event in seen[1:]]
