"""Allow/block lists through the official SDK, at organization, pod and inbox scope.

The server is shared by the whole session, so organization-level entries use unique names and
are removed again; allow lists (which restrict everything) are only made at pod/inbox scope.
"""

from __future__ import annotations

import pytest
from agentmail.core.api_error import ApiError
from agentmail.errors import NotFoundError

from conftest import NO_RETRY, Harness


def test_org_list_crud(harness: Harness) -> None:
    client = harness.client()
    domain = harness.new_username() + ".example"
    address = f"Partner@{domain}"
    created = client.lists.create("receive", "block", entry=address, reason="spammy")
    try:
        assert created.entry == address.lower() and created.entry_type == "email"
        assert created.direction == "receive" and created.list_type == "block" and created.reason == "spammy"
        assert created.organization_id and created.created_at
        dom = client.lists.create("receive", "block", entry=domain)
        assert dom.entry_type == "domain"

        got = client.lists.get("receive", "block", address.lower())
        assert got.entry == address.lower()
        entries = [e.entry for e in client.lists.list("receive", "block", limit=1000).entries]
        assert address.lower() in entries and domain in entries
        assert entries == sorted(entries)
        with pytest.raises(NotFoundError):
            client.lists.get("receive", "allow", address.lower(), request_options=NO_RETRY)
        # Creating again is idempotent.
        assert client.lists.create("receive", "block", entry=address).entry == address.lower()
    finally:
        client.lists.delete("receive", "block", address.lower())
        client.lists.delete("receive", "block", domain)
    with pytest.raises(NotFoundError):
        client.lists.get("receive", "block", address.lower(), request_options=NO_RETRY)


def test_list_validation(harness: Harness) -> None:
    client = harness.client()
    with pytest.raises(ApiError) as bad_entry:
        client.lists.create("send", "block", entry="not an address", request_options=NO_RETRY)
    assert bad_entry.value.status_code == 400
    with pytest.raises(ApiError) as bad_direction:
        client.lists.list("sideways", "block", request_options=NO_RETRY)
    assert bad_direction.value.status_code == 400


def test_pod_and_inbox_lists_are_scoped(harness: Harness) -> None:
    admin = harness.client()
    pod = admin.pods.create(name="lists-" + harness.new_username())
    other_pod = admin.pods.create(name="lists-other-" + harness.new_username())
    inbox = admin.pods.inboxes.create(pod.pod_id, username=harness.new_username())

    pod_entry = admin.pods.lists.create(pod.pod_id, "send", "allow", entry="friend.example")
    assert pod_entry.pod_id == pod.pod_id and pod_entry.inbox_id is None
    inbox_entry = admin.inboxes.lists.create(inbox.inbox_id, "reply", "block", entry="x@friend.example")
    assert inbox_entry.pod_id == pod.pod_id and inbox_entry.inbox_id == inbox.inbox_id

    assert [e.entry for e in admin.pods.lists.list(pod.pod_id, "send", "allow").entries] == ["friend.example"]
    assert admin.pods.lists.list(other_pod.pod_id, "send", "allow").count == 0
    assert [e.entry for e in admin.inboxes.lists.list(inbox.inbox_id, "reply", "block").entries] == [
        "x@friend.example"
    ]
    assert (
        admin.inboxes.lists.get(inbox.inbox_id, "reply", "block", "x@friend.example").inbox_id
        == inbox.inbox_id
    )

    # An inbox key reaches its inbox's lists only; pod and organization lists are refused.
    key = admin.inboxes.api_keys.create(inbox.inbox_id, request={}).api_key
    scoped = harness.client(api_key=key)
    assert scoped.inboxes.lists.list(inbox.inbox_id, "reply", "block").count == 1
    with pytest.raises(ApiError) as pod_route:
        scoped.pods.lists.list(pod.pod_id, "send", "allow", request_options=NO_RETRY)
    assert pod_route.value.status_code == 403
    with pytest.raises(ApiError) as org_route:
        scoped.lists.list("send", "block", request_options=NO_RETRY)
    assert org_route.value.status_code == 403

    # A pod key cannot see another pod's lists (404).
    pod_key = admin.pods.api_keys.create(pod.pod_id, request={}).api_key
    with pytest.raises(ApiError) as hidden:
        harness.client(api_key=pod_key).pods.lists.list(
            other_pod.pod_id, "send", "allow", request_options=NO_RETRY
        )
    assert hidden.value.status_code == 404

    # Permissions: read-only key cannot add or delete.
    reader = admin.inboxes.api_keys.create(inbox.inbox_id, request={"permissions": {"list_entry_read": True}})
    ro = harness.client(api_key=reader.api_key)
    assert ro.inboxes.lists.list(inbox.inbox_id, "reply", "block").count == 1
    with pytest.raises(ApiError) as denied:
        ro.inboxes.lists.delete(
            inbox.inbox_id, "reply", "block", "x@friend.example", request_options=NO_RETRY
        )
    assert denied.value.status_code == 403 and "list_entry_delete" in denied.value.body["fix"]

    admin.inboxes.lists.delete(inbox.inbox_id, "reply", "block", "x@friend.example")
    admin.pods.lists.delete(pod.pod_id, "send", "allow", "friend.example")
    assert admin.pods.lists.list(pod.pod_id, "send", "allow").count == 0


def test_a_deleted_inbox_takes_its_lists_along(harness: Harness) -> None:
    """An inbox made again with the same address, in another pod, starts with empty lists."""
    admin = harness.client()
    username = harness.new_username()
    first = admin.pods.inboxes.create(admin.pods.create(name="lists-" + username).pod_id, username=username)
    admin.inboxes.lists.create(first.inbox_id, "receive", "block", entry="x@old.example", reason="theirs")
    admin.inboxes.delete(first.inbox_id)

    pod = admin.pods.create(name="lists-again-" + username)
    again = admin.pods.inboxes.create(pod.pod_id, username=username)
    assert again.inbox_id == first.inbox_id
    assert admin.inboxes.lists.list(again.inbox_id, "receive", "block").count == 0
    entry = admin.inboxes.lists.create(again.inbox_id, "receive", "block", entry="x@old.example")
    assert entry.pod_id == pod.pod_id and entry.reason is None


@pytest.mark.parametrize(
    "entry", ["a" * 250 + "@example.com", "a" * 5000 + "@example.com", "a@b@example.com"]
)
def test_impossible_addresses_are_400(harness: Harness, entry: str) -> None:
    """No address is longer than 254 characters (RFC 5321); on PostgreSQL a long one was a 500."""
    client = harness.client()
    inbox = client.inboxes.create(request={"username": harness.new_username()}).inbox_id
    with pytest.raises(ApiError) as refused:
        client.inboxes.lists.create(inbox, "receive", "block", entry=entry, request_options=NO_RETRY)
    assert refused.value.status_code == 400
    if entry.count("@") == 1:
        with pytest.raises(ApiError) as send:
            client.inboxes.messages.send(inbox, to=entry, subject="hi", text="hi", request_options=NO_RETRY)
        assert send.value.status_code == 400
