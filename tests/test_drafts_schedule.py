"""Scheduled drafts are durable jobs: on time, never early, once, across restarts and processes."""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from agentmail import AgentMail
from agentmail.environment import AgentMailEnvironment
from agentmail.errors import NotFoundError
from agentmail.events.types.message_rejected_event import MessageRejectedEvent

from agentmx.testing import postgres
from agentmx.testing.server import ServerProcess
from conftest import BACKENDS, NO_RETRY, _postgres_or_skip, make_server
from drafts_support import messages, new_inbox, wait_for
from test_websocket import next_frame, subscribe

# Seconds after send_at (or after the server is back) a send may take. The test servers poll for jobs
# every 0.1 s, so this is load headroom: 1.5 s was missed on a loaded machine. It still tells a send on
# time from one after a failed run's first backoff (5 s) or a lapsed claim's lease (300 s).
LATE_TOLERANCE = 3.0


def _client(server: ServerProcess, key: str) -> AgentMail:
    env = AgentMailEnvironment(http=server.base_url, websockets=server.ws_url)
    return AgentMail(api_key=key, environment=env)


def _received(client: AgentMail, inbox: str, subject: str) -> list[Any]:
    return [m for m in messages(client, inbox, "received") if m.subject == subject]


def _sent(client: AgentMail, inbox: str, subject: str) -> list[Any]:
    return [m for m in messages(client, inbox, "sent") if m.subject == subject]


@pytest.fixture(scope="module", params=BACKENDS)
def scheduler(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A server of this file's own for the tests that neither restart it nor look past their own inbox:
    not the session's, whose other tests' jobs could hold up a send past its tolerance."""
    server, url = make_server(tmp_path_factory.mktemp(f"scheduler-{request.param}"), request.param)
    server.start()
    try:
        yield server
    finally:
        server.kill()
        if url:
            postgres.drop_database(url)


@pytest.mark.parametrize("backend", BACKENDS)
def test_scheduled_send_survives_restart_on_time_exactly_once(fresh_server: Any, backend: str) -> None:
    server = fresh_server(backend).start()
    client = _client(server, server.create_key())
    sender, recipient = new_inbox(client), new_inbox(client)
    subject = "scheduled-" + secrets.token_hex(3)
    send_at = datetime.now(UTC) + timedelta(seconds=3)
    draft = client.inboxes.drafts.create(sender, to=[recipient], subject=subject, text="hi", send_at=send_at)
    assert draft.send_status == "scheduled" and "scheduled" in draft.labels

    server.stop()  # the job lives in the database, not in this process
    server.start()
    back = datetime.now(UTC)

    sent = wait_for(lambda: _sent(client, sender, subject), timeout=20)
    sent_at = sent[0].timestamp
    assert sent_at >= send_at, "sent before send_at"
    assert (sent_at - max(send_at, back)).total_seconds() <= LATE_TOLERANCE
    wait_for(lambda: _received(client, recipient, subject), timeout=20)
    time.sleep(2)  # give a duplicate every chance to appear
    assert len(_sent(client, sender, subject)) == 1
    assert len(_received(client, recipient, subject)) == 1
    with pytest.raises(NotFoundError):
        client.inboxes.drafts.get(sender, draft.draft_id, request_options=NO_RETRY)


@pytest.mark.parametrize("backend", BACKENDS)
def test_drafts_a_sigkill_leaves_sending_are_each_sent_once_after_restart(
    fresh_server: Any, backend: str
) -> None:
    """SIGKILL while a burst of drafts is being sent: some are left ``sending`` (the first of the send's
    two transactions committed). After a restart each is sent once and none is left; on PostgreSQL once
    the killed process's claims lapse (a 2 s lease here)."""
    server = fresh_server(backend, env={"AGENTMX_JOB_LEASE": "2"}).start()
    client = _client(server, server.create_key())
    sender, recipient = new_inbox(client), new_inbox(client)
    send_at = datetime.now(UTC) + timedelta(seconds=1)
    subjects = [f"burst-{i}-{secrets.token_hex(2)}" for i in range(40)]
    for subject in subjects:
        client.inboxes.drafts.create(sender, to=[recipient], subject=subject, send_at=send_at)

    def sending() -> bool:
        return any(d.send_status == "sending" for d in client.inboxes.drafts.list(sender).drafts)

    wait_for(sending, timeout=20, interval=0.01)
    server.kill()
    server.start()

    wait_for(lambda: client.inboxes.drafts.list(sender).count == 0, timeout=30)
    wait_for(lambda: len(messages(client, recipient, "received")) >= len(subjects), timeout=20)
    time.sleep(1)  # any duplicate has had time to appear
    assert sorted(m.subject for m in messages(client, sender, "sent")) == sorted(subjects)
    assert sorted(m.subject for m in messages(client, recipient, "received")) == sorted(subjects)


def test_reschedule_unschedule_and_delete(scheduler: ServerProcess) -> None:
    server = scheduler
    client = _client(server, server.create_key())
    sender, recipient = new_inbox(client), new_inbox(client)
    now = datetime.now(UTC)
    kept_subject, moved_subject, unscheduled_subject, deleted_subject = (
        f"{kind}-{secrets.token_hex(3)}" for kind in ("kept", "moved", "unscheduled", "deleted")
    )

    def schedule(subject: str, when: datetime) -> str:
        return client.inboxes.drafts.create(sender, to=[recipient], subject=subject, send_at=when).draft_id

    # Margins of seconds: the six requests below must all land before the old send_at, and the check
    # that the moved draft was not sent then must run before its new one (1.5 s and 1 s were little
    # on a loaded machine: the drafts went at the old time, or the moved one was sent and gone).
    old_time, new_time = now + timedelta(seconds=3), now + timedelta(seconds=7)
    schedule(kept_subject, old_time)
    moved = schedule(moved_subject, old_time)
    unscheduled = schedule(unscheduled_subject, old_time)
    deleted = schedule(deleted_subject, old_time)
    assert client.inboxes.drafts.update(sender, moved, send_at=new_time).send_status == "scheduled"
    plain = client.inboxes.drafts.update(sender, unscheduled, send_at=None)
    assert plain.send_status is None and "scheduled" not in plain.labels
    client.inboxes.drafts.delete(sender, deleted)

    # Once the draft left at the old send_at has gone (a fixed sleep could end before a loaded server
    # got there, and the check below then proved nothing), and a moment more for a send beside it.
    wait_for(lambda: _sent(client, sender, kept_subject), timeout=20)
    time.sleep(0.5)
    # By the times the server records: a loaded machine may be past the new send_at by now.
    early = [m for m in _sent(client, sender, moved_subject) if m.timestamp < new_time]
    assert not early, "sent at the old send_at"
    with contextlib.suppress(NotFoundError):  # gone once sent at its new send_at (checked below)
        status = client.inboxes.drafts.get(sender, moved, request_options=NO_RETRY).send_status
        assert status == "scheduled" or datetime.now(UTC) >= new_time, status

    sent = wait_for(lambda: _sent(client, sender, moved_subject), timeout=20)
    assert sent[0].timestamp >= new_time
    assert (sent[0].timestamp - new_time).total_seconds() <= LATE_TOLERANCE
    time.sleep(1)
    assert not _sent(client, sender, unscheduled_subject)
    assert not _sent(client, sender, deleted_subject)
    assert client.inboxes.drafts.get(sender, unscheduled).send_status is None


def test_failed_scheduled_send_keeps_the_draft(scheduler: ServerProcess) -> None:
    server = scheduler
    client = _client(server, server.create_key())
    sender = new_inbox(client)
    # No recipients: the send is refused (422) when the job runs, and the draft says "failed".
    draft = client.inboxes.drafts.create(
        sender, subject="nobody", send_at=datetime.now(UTC) + timedelta(seconds=0.5)
    )
    failed = wait_for(
        lambda: (d := client.inboxes.drafts.get(sender, draft.draft_id)).send_status == "failed" and d
    )
    assert "scheduled" not in failed.labels
    # A new send_at schedules it again.
    again = client.inboxes.drafts.update(
        sender, draft.draft_id, send_at=datetime.now(UTC) + timedelta(hours=1)
    )
    assert again.send_status == "scheduled"


def test_two_processes_on_one_postgres_send_each_draft_once(tmp_path: Path) -> None:
    _postgres_or_skip()
    url = postgres.create_database()
    # Two processes of one deployment share the database and the blob folder (data_dir).
    first = ServerProcess(tmp_path / "shared", database_url=url)
    second = ServerProcess(tmp_path / "shared", database_url=url)
    try:
        first.start()
        second.start()
        key = first.create_key()
        one, two = _client(first, key), _client(second, key)
        sender, recipient = new_inbox(one), new_inbox(one)
        base = datetime.now(UTC) + timedelta(seconds=2)
        subjects = [f"multi-{i}-{secrets.token_hex(2)}" for i in range(8)]
        for i, subject in enumerate(subjects):
            api = one if i % 2 else two
            api.inboxes.drafts.create(
                sender, to=[recipient], subject=subject, send_at=base + timedelta(milliseconds=50 * i)
            )

        def all_sent() -> bool:
            return all(_sent(one, sender, s) for s in subjects)

        wait_for(all_sent, timeout=30)
        wait_for(lambda: all(_received(two, recipient, s) for s in subjects), timeout=30)
        time.sleep(2)  # any duplicate has had time to appear
        for i, subject in enumerate(subjects):
            sent = _sent(one, sender, subject)
            assert len(sent) == 1, subject
            assert sent[0].timestamp >= base + timedelta(milliseconds=50 * i)
            assert len(_received(one, recipient, subject)) == 1, subject
        assert one.inboxes.drafts.list(sender).count == 0
    finally:
        first.kill()
        second.kill()
        postgres.drop_database(url)


def test_refused_scheduled_send_emits_message_rejected(scheduler: ServerProcess) -> None:
    """A scheduled send refused when its time comes (a paused inbox, a blocked recipient) is reported as
    ``message.rejected``: an agent waiting on events learns it failed. The draft's id stands in for the
    message id (no message exists), and the draft stays, ``failed``."""
    server = scheduler
    client = _client(server, server.create_key())
    paused, sender = new_inbox(client), new_inbox(client)
    blocked = f"blocked-{secrets.token_hex(3)}@example.org"
    client.lists.create("send", "block", entry=blocked)
    with client.websockets.connect() as socket:
        subscribe(socket, inbox_ids=[paused, sender], event_types=["message.rejected"])
        soon = datetime.now(UTC) + timedelta(seconds=1)
        on_paused = client.inboxes.drafts.create(paused, to=["x@example.org"], subject="p", send_at=soon)
        to_blocked = client.inboxes.drafts.create(sender, to=[blocked], subject="b", send_at=soon)
        client.inboxes.update(paused, status="paused")

        events = {}
        for _ in range(2):
            event = next_frame(socket, timeout=15)
            assert isinstance(event, MessageRejectedEvent), event
            events[event.reject.message_id] = event.reject
    assert set(events) == {on_paused.draft_id, to_blocked.draft_id}
    paused_reject, blocked_reject = events[on_paused.draft_id], events[to_blocked.draft_id]
    assert paused_reject.inbox_id == paused and "paused" in paused_reject.reason
    assert blocked_reject.inbox_id == sender and blocked in blocked_reject.reason
    # A draft that starts no thread has none: its id stands in there too.
    assert blocked_reject.thread_id == to_blocked.draft_id
    assert blocked_reject.timestamp is not None
    failed = client.inboxes.drafts.get(sender, to_blocked.draft_id)
    assert failed.send_status == "failed" and "scheduled" not in failed.labels
