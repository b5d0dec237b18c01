"""Pods, organizations and identity through the official SDK."""

from __future__ import annotations

from typing import Any

import pytest
from agentmail.core.api_error import ApiError
from agentmail.errors import NotFoundError

from conftest import NO_RETRY, Harness

HOOK_URL = "http://127.0.0.1:9/hook"  # never called: no mail flows in these tests
EVENTS: Any = ["message.received"]


def test_pod_lifecycle(harness: Harness) -> None:
    client = harness.client()
    cid = "pod-" + harness.new_username()
    pod = client.pods.create(name="Tenant A", client_id=cid)
    assert client.pods.create(name="ignored", client_id=cid).pod_id == pod.pod_id
    assert client.pods.get(pod.pod_id).name == "Tenant A"
    assert pod.pod_id in [p.pod_id for p in client.pods.list(limit=100).pods]

    inbox = client.pods.inboxes.create(pod.pod_id, metadata={"tenant": "a"})
    assert inbox.pod_id == pod.pod_id
    assert client.pods.inboxes.get(pod.pod_id, inbox.inbox_id).metadata == {"tenant": "a"}
    updated = client.pods.inboxes.update(pod.pod_id, inbox.inbox_id, metadata={"tenant": "b"})
    assert updated.metadata == {"tenant": "b"}
    assert [i.inbox_id for i in client.pods.inboxes.search(pod.pod_id, q=inbox.inbox_id).inboxes] == [
        inbox.inbox_id
    ]

    with pytest.raises(ApiError) as refused:
        client.pods.delete(pod.pod_id, request_options=NO_RETRY)
    assert refused.value.status_code == 409 and refused.value.body["code"] == "cannot_delete"

    client.pods.inboxes.delete(pod.pod_id, inbox.inbox_id)
    client.pods.delete(pod.pod_id)
    with pytest.raises(NotFoundError):
        client.pods.get(pod.pod_id, request_options=NO_RETRY)


def test_pod_created_with_empty_body_gets_a_name(harness: Harness) -> None:
    pod = harness.client().pods.create()
    assert pod.name


def test_inbox_of_another_pod_is_not_found_on_pod_route(harness: Harness) -> None:
    client = harness.client()
    a, b = client.pods.create(), client.pods.create()
    inbox = client.pods.inboxes.create(a.pod_id)
    with pytest.raises(NotFoundError):
        client.pods.inboxes.get(b.pod_id, inbox.inbox_id, request_options=NO_RETRY)


def test_organization_and_identity(harness: Harness) -> None:
    client = harness.client()
    org = client.organizations.get()
    assert org.organization_id and org.inbox_count >= 0
    me = client.auth.me() if hasattr(client, "auth") else None
    if me is not None:
        assert me.scope_type == "organization" and me.organization_id == org.organization_id


def test_scoped_keys_from_cli(harness: Harness) -> None:
    client = harness.client()
    pod = client.pods.create()
    inbox = client.pods.inboxes.create(pod.pod_id)
    other = client.inboxes.create()
    pod_client = harness.client(harness.server.create_key("--pod", pod.pod_id))
    assert [i.inbox_id for i in pod_client.inboxes.list().inboxes] == [inbox.inbox_id]
    with pytest.raises(NotFoundError):
        pod_client.inboxes.get(other.inbox_id, request_options=NO_RETRY)
    inbox_client = harness.client(harness.server.create_key("--inbox", inbox.inbox_id))
    assert inbox_client.inboxes.get(inbox.inbox_id).inbox_id == inbox.inbox_id
    with pytest.raises(ApiError) as forbidden:
        inbox_client.pods.inboxes.list(pod.pod_id, request_options=NO_RETRY)
    assert forbidden.value.status_code == 403


def test_deleting_an_inbox_revokes_its_keys_at_once(harness: Harness) -> None:
    client = harness.client()
    inbox = client.inboxes.create()
    inbox_client = harness.client(harness.server.create_key("--inbox", inbox.inbox_id))
    assert inbox_client.inboxes.get(inbox.inbox_id).inbox_id == inbox.inbox_id  # now cached
    client.inboxes.delete(inbox.inbox_id)
    with pytest.raises(ApiError) as revoked:
        inbox_client.inboxes.get(inbox.inbox_id, request_options=NO_RETRY)
    assert revoked.value.status_code == 401


def test_deleting_a_pod_revokes_its_keys_at_once(harness: Harness) -> None:
    """A pod key has authority over one live pod: it dies with the pod, siblings and cache included."""
    client = harness.client()
    pod = client.pods.create()
    pod_key = client.pods.api_keys.create(pod.pod_id, request={"name": "pod key"}).api_key
    sibling = client.pods.api_keys.create(pod.pod_id, request={"name": "sibling"})
    pod_client = harness.client(pod_key)
    assert [k.api_key_id for k in pod_client.api_keys.list().api_keys]  # now cached
    client.pods.delete(pod.pod_id)
    with pytest.raises(ApiError) as revoked:
        pod_client.api_keys.update(sibling.api_key_id, name="still mine", request_options=NO_RETRY)
    assert revoked.value.status_code == 401
    assert pod.pod_id not in [k.pod_id for k in client.api_keys.list(limit=100).api_keys]


def test_deleting_a_pod_drops_its_list_entries(harness: Harness) -> None:
    client = harness.client()
    pod = client.pods.create()
    client.pods.lists.create(pod.pod_id, "receive", "block", entry="spam.test")
    client.pods.lists.create(pod.pod_id, "send", "allow", entry="partner.test")
    client.pods.delete(pod.pod_id)
    assert harness.count_rows("SELECT count(*) FROM list_entries WHERE pod_id = :pod", pod=pod.pod_id) == 0


def test_deleting_a_pod_unlists_it_from_webhooks(harness: Harness) -> None:
    """The pod leaves every webhook's pod_ids; a webhook left with no pod nor inbox to follow is
    disabled, not widened to every event of the organization."""
    client = harness.client()
    gone, kept = client.pods.create(), client.pods.create()
    both = client.webhooks.create(url=HOOK_URL, event_types=EVENTS, pod_ids=[gone.pod_id, kept.pod_id])
    only = client.webhooks.create(url=HOOK_URL, event_types=EVENTS, pod_ids=[gone.pod_id])
    client.pods.delete(gone.pod_id)
    both_now = client.webhooks.get(both.webhook_id)
    assert both_now.pod_ids == [kept.pod_id] and both_now.enabled
    only_now = client.webhooks.get(only.webhook_id)
    assert not only_now.pod_ids and not only_now.enabled


def test_deleting_an_inbox_disables_a_webhook_that_followed_only_it(harness: Harness) -> None:
    """Before, its inbox_ids went empty and it received every event of the organization (or pod)."""
    client = harness.client()
    pod = client.pods.create()
    inbox = client.pods.inboxes.create(pod.pod_id)
    org_hook = client.webhooks.create(url=HOOK_URL, event_types=EVENTS, inbox_ids=[inbox.inbox_id])
    pod_hook = client.pods.webhooks.create(
        pod.pod_id, url=HOOK_URL, event_types=EVENTS, inbox_ids=[inbox.inbox_id]
    )
    client.inboxes.delete(inbox.inbox_id)
    for now in (
        client.webhooks.get(org_hook.webhook_id),
        client.pods.webhooks.get(pod.pod_id, pod_hook.webhook_id),
    ):
        assert not now.inbox_ids and not now.enabled
