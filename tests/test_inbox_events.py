"""GET /v0/inboxes/{inbox_id}/events: the label change log, through the SDK."""

from __future__ import annotations

import pytest
from agentmail.core.api_error import ApiError

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


def test_unknown_inbox_is_404(harness: Harness) -> None:
    with pytest.raises(ApiError) as err:
        harness.client().inboxes.events.list("nobody@nowhere.example", request_options=NO_RETRY)
    assert err.value.status_code == 404
