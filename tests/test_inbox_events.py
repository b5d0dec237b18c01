"""GET /v0/inboxes/{inbox_id}/events: the label change log, through the SDK."""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
from agentmail.core.api_error import ApiError
from sqlalchemy import func, select

from agentmx.db.engine import Database
from agentmx.db.migrate import upgrade
from agentmx.db.models import InboxEvent
from agentmx.services.inbox_events import record_label_change
from agentmx.settings import normalize_database_url
from agentmx.testing import postgres
from conftest import NO_RETRY, Harness
from events_support import new_inbox, send_mail, wait_for


def test_label_changes_are_logged(harness: Harness) -> None:
    client = harness.client()
    inbox = new_inbox(client)
    message_id = send_mail(harness.server, inbox, subject="labels")
    wait_for(lambda: client.inboxes.messages.list(inbox).messages)
    before = {e.event_id for e in client.inboxes.events.list(inbox, limit=100).events}
    client.inboxes.messages.update(inbox, message_id, add_labels=["important"], remove_labels=["unread"])
    events = [e for e in client.inboxes.events.list(inbox, limit=100).events if e.event_id not in before]
    assert {(e.event_type, e.label) for e in events} == {
        ("label.added", "important"),
        ("label.removed", "unread"),
    }
    for event in events:
        assert event.inbox_id == inbox and event.message_id == message_id
        assert event.organization_id and event.pod_id and event.event_at and event.created_at
    ids = [int(e.event_id) for e in client.inboxes.events.list(inbox, limit=100).events]
    assert ids == sorted(ids, reverse=True)  # newest first, monotonic ids
    ascending = [int(e.event_id) for e in client.inboxes.events.list(inbox, ascending=True).events]
    assert ascending == sorted(ids)
    first = client.inboxes.events.list(inbox, limit=1)
    assert first.count == 1 and first.next_page_token
    second = client.inboxes.events.list(inbox, limit=1, page_token=first.next_page_token)
    assert int(second.events[0].event_id) < int(first.events[0].event_id)


def test_concurrent_label_changes_apply_and_log_once(harness: Harness) -> None:
    """Workers adding (then removing) one label at once: every request succeeds, and the log shows
    one change each way (on PostgreSQL the second insert of the label failed with a 500, and every
    removal was logged)."""
    client = harness.client()
    inbox = new_inbox(client)
    message_id = send_mail(harness.server, inbox, subject="labels at once")
    thread_id = wait_for(lambda: client.inboxes.messages.list(inbox).messages)[0].thread_id

    def change(changes: dict[str, list[str]], i: int) -> None:
        other = harness.client()
        if i % 3 == 0:  # the same change through the three routes
            other.inboxes.messages.update(inbox, message_id, **changes, request_options=NO_RETRY)
        elif i % 3 == 1:
            other.inboxes.threads.update(inbox, thread_id, **changes, request_options=NO_RETRY)
        else:
            other.inboxes.messages.batch_update(
                inbox, message_ids=[message_id], **changes, request_options=NO_RETRY
            )

    for changes in ({"add_labels": ["triaged"]}, {"remove_labels": ["triaged"]}):
        with ThreadPoolExecutor(max_workers=12) as pool:
            list(pool.map(functools.partial(change, changes), range(12)))
    logged = [
        e.event_type for e in client.inboxes.events.list(inbox, limit=100).events if e.label == "triaged"
    ]
    assert sorted(logged) == ["label.added", "label.removed"]
    assert "triaged" not in client.inboxes.messages.get(inbox, message_id).labels


def test_unknown_inbox_is_404(harness: Harness) -> None:
    with pytest.raises(ApiError) as err:
        harness.client().inboxes.events.list("nobody@nowhere.example", request_options=NO_RETRY)
    assert err.value.status_code == 404


def test_label_change_ids_follow_commit_order() -> None:
    """A client syncs the log from the last id it saw, so a change must not commit under an id below
    one already visible. On PostgreSQL the id was taken at the flush: a transaction that flushed
    first and committed last showed up below the other's."""
    if not postgres.available():  # SQLite serialises writers: none commits in between
        pytest.skip("PostgreSQL not reachable")
    url = postgres.create_database()
    upgrade(url)
    message = SimpleNamespace(
        organization_id="org_1", pod_id="pod_1", inbox_id="a@x.test", message_id="<m@x>"
    )

    async def run() -> list[str]:
        db = Database(normalize_database_url(url))
        flushed, committed = asyncio.Event(), asyncio.Event()

        async def first() -> None:
            async with db.transaction() as session:
                await record_label_change(session, message, "flushed-first", True)  # type: ignore[arg-type]
                await session.flush()
                flushed.set()
                await committed.wait()

        async def second() -> None:
            await flushed.wait()
            async with db.transaction() as session:
                await record_label_change(session, message, "committed-first", True)  # type: ignore[arg-type]
            committed.set()

        try:
            await asyncio.gather(first(), second())
            async with db.read() as session:
                return list(await session.scalars(select(InboxEvent.label).order_by(InboxEvent.id)))
        finally:
            await db.engine.dispose()
            await db.reader.dispose()

    try:
        assert asyncio.run(run()) == ["committed-first", "flushed-first"]
    finally:
        postgres.drop_database(url)


def test_a_savepoint_leaves_the_log_rows_for_the_commit(empty_database: str) -> None:
    """SQLAlchemy fires before_commit when a savepoint is released too: the pending log rows must wait
    for the real commit (inserted there, the event lock was held while the transaction went on)."""
    upgrade(empty_database)
    message = SimpleNamespace(
        organization_id="org_1", pod_id="pod_1", inbox_id="a@x.test", message_id="<m@x>"
    )
    count = select(func.count()).select_from(InboxEvent)

    async def run() -> tuple[int | None, int | None]:
        db = Database(normalize_database_url(empty_database))
        try:
            async with db.transaction() as session:
                await record_label_change(session, message, "pending", True)  # type: ignore[arg-type]
                async with session.begin_nested():
                    pass
                inside = await session.scalar(count)
            async with db.read() as session:
                return inside, await session.scalar(count)
        finally:
            await db.engine.dispose()
            await db.reader.dispose()

    assert asyncio.run(run()) == (0, 1)
