"""API keys through the official SDK: scopes, permissions, escalation, expiry, used_at."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from agentmail import AgentMail
from agentmail.core.api_error import ApiError
from agentmail.errors import NotFoundError
from websockets.sync.client import connect

from conftest import NO_RETRY, Harness


def _status(exc: pytest.ExceptionInfo[ApiError]) -> tuple[int | None, str | None]:
    body: Any = exc.value.body
    return exc.value.status_code, body.get("code") if isinstance(body, dict) else None


def _two_inboxes(harness: Harness) -> tuple[AgentMail, str, str, str]:
    admin = harness.client()
    pod = admin.pods.create(name="keys-" + harness.new_username())
    mine = admin.pods.inboxes.create(pod.pod_id, username=harness.new_username())
    other = admin.pods.inboxes.create(pod.pod_id, username=harness.new_username())
    return admin, pod.pod_id, mine.inbox_id, other.inbox_id


def test_inbox_key_sees_only_its_inbox(harness: Harness) -> None:
    admin, pod_id, mine, other = _two_inboxes(harness)
    created = admin.inboxes.api_keys.create(mine, request={"name": "agent"})
    assert created.api_key.startswith("am_") and created.inbox_id == mine and created.pod_id == pod_id
    assert created.prefix and created.api_key.startswith(created.prefix)

    scoped = harness.client(api_key=created.api_key)
    assert [i.inbox_id for i in scoped.inboxes.list().inboxes] == [mine]
    assert scoped.inboxes.get(mine).inbox_id == mine
    with pytest.raises(NotFoundError):
        scoped.inboxes.get(other, request_options=NO_RETRY)
    with pytest.raises(NotFoundError):
        scoped.inboxes.api_keys.list(other, request_options=NO_RETRY)

    # Organization and pod routes are refused to an inbox key.
    with pytest.raises(ApiError) as org:
        scoped.organizations.get(request_options=NO_RETRY)
    assert org.value.status_code == 403
    with pytest.raises(ApiError) as pod_create:
        scoped.pods.create(name="nope", request_options=NO_RETRY)
    assert pod_create.value.status_code == 403
    with pytest.raises(ApiError) as pod_route:
        scoped.pods.api_keys.list(pod_id, request_options=NO_RETRY)
    assert pod_route.value.status_code == 403

    me = scoped.auth.me() if hasattr(scoped, "auth") else None
    if me is not None:
        assert me.scope_type == "inbox" and me.scope_id == mine


def test_key_crud_and_shapes(harness: Harness) -> None:
    admin, pod_id, mine, _ = _two_inboxes(harness)
    created = admin.pods.api_keys.create(pod_id, request={"name": "pod key"})
    assert created.pod_id == pod_id and created.inbox_id is None and created.permissions is None

    got = admin.api_keys.get(created.api_key_id)
    assert got.type == "bearer" and got.name == "pod key" and got.pod_id == pod_id
    assert got.used_at is None and got.created_at and got.updated_at

    listed = admin.pods.api_keys.list(pod_id)
    assert [k.api_key_id for k in listed.api_keys] == [created.api_key_id]
    assert created.api_key_id in [
        k.api_key_id for k in admin.api_keys.list(type="bearer", limit=1000).api_keys
    ]
    assert admin.api_keys.list(type="public_key").count == 0

    renamed = admin.pods.api_keys.update(
        pod_id, created.api_key_id, name="renamed", permissions={"inbox_read": True}
    )
    assert (
        renamed.name == "renamed"
        and renamed.permissions is not None
        and renamed.permissions.inbox_read is True
    )

    # used_at is recorded after the key is used.
    harness.client(api_key=created.api_key).inboxes.list()
    assert admin.api_keys.get(created.api_key_id).used_at is not None

    # The pod key sees its pod's inbox keys, not other pods' keys.
    inbox_key = admin.inboxes.api_keys.create(mine, request={"name": "in"})
    pod_client = harness.client(api_key=created.api_key)
    with pytest.raises(ApiError) as denied:  # now restricted to inbox_read: api_key_read missing
        pod_client.api_keys.list(request_options=NO_RETRY)
    assert _status(denied) == (403, "missing_permission")
    assert "api_key_read" in denied.value.body["fix"]

    admin.pods.api_keys.update(
        pod_id, created.api_key_id, permissions={"api_key_read": True, "inbox_read": True}
    )
    seen = {k.api_key_id for k in pod_client.api_keys.list().api_keys}
    assert inbox_key.api_key_id in seen and created.api_key_id in seen
    assert all(k.pod_id == pod_id for k in pod_client.api_keys.list().api_keys)

    admin.inboxes.api_keys.delete(mine, inbox_key.api_key_id)
    with pytest.raises(NotFoundError):
        admin.api_keys.get(inbox_key.api_key_id, request_options=NO_RETRY)
    admin.api_keys.delete(created.api_key_id)
    with pytest.raises(ApiError) as gone:
        pod_client.inboxes.list(request_options=NO_RETRY)
    assert gone.value.status_code == 401


def test_permissions_absent_and_present(harness: Harness) -> None:
    admin, pod_id, mine, _ = _two_inboxes(harness)
    reader = admin.inboxes.api_keys.create(
        mine, request={"permissions": {"inbox_read": True, "inbox_update": False}}
    )
    client = harness.client(api_key=reader.api_key)
    assert client.inboxes.get(mine).inbox_id == mine
    with pytest.raises(ApiError) as refused:
        client.inboxes.update(mine, display_name="x", request_options=NO_RETRY)
    assert _status(refused) == (403, "missing_permission")
    assert "inbox_update" in refused.value.body["fix"]

    full = harness.client(api_key=admin.inboxes.api_keys.create(mine, request={}).api_key)
    assert full.inboxes.update(mine, display_name="renamed").display_name == "renamed"


def test_no_escalation(harness: Harness) -> None:
    admin, pod_id, mine, _ = _two_inboxes(harness)
    limited = admin.pods.api_keys.create(
        pod_id, request={"permissions": {"api_key_create": True, "api_key_update": True, "inbox_read": True}}
    )
    client = harness.client(api_key=limited.api_key)

    with pytest.raises(ApiError) as escalate:
        client.pods.api_keys.create(
            pod_id, request={"permissions": {"inbox_delete": True}}, request_options=NO_RETRY
        )
    assert _status(escalate) == (403, "permission_escalation")
    with pytest.raises(ApiError) as unrestricted:
        client.pods.api_keys.create(pod_id, request={"name": "all"}, request_options=NO_RETRY)
    assert _status(unrestricted) == (403, "unrestricted_key_required")

    child = client.inboxes.api_keys.create(mine, request={"permissions": {"inbox_read": True}})
    assert child.inbox_id == mine
    with pytest.raises(ApiError) as raise_child:
        client.inboxes.api_keys.update(
            mine, child.api_key_id, permissions={"message_send": True}, request_options=NO_RETRY
        )
    assert _status(raise_child) == (403, "permission_escalation")

    # A pod key cannot reach outside its pod.
    other_pod = admin.pods.create(name="elsewhere")
    with pytest.raises(NotFoundError):
        client.pods.api_keys.create(
            other_pod.pod_id, request={"permissions": {"inbox_read": True}}, request_options=NO_RETRY
        )


def test_expiry(harness: Harness) -> None:
    admin, pod_id, mine, _ = _two_inboxes(harness)
    soon = datetime.now(UTC) + timedelta(seconds=2)
    short = admin.inboxes.api_keys.create(mine, request={"expires_at": soon})
    assert short.expires_at is not None
    client = harness.client(api_key=short.api_key)

    # A child may not outlive its parent; without expires_at it inherits it.
    with pytest.raises(ApiError) as outlive:
        client.inboxes.api_keys.create(
            mine, request={"expires_at": soon + timedelta(days=1)}, request_options=NO_RETRY
        )
    assert outlive.value.status_code == 403
    child = client.inboxes.api_keys.create(mine, request={"name": "child"})
    assert child.expires_at is not None and abs((child.expires_at - short.expires_at).total_seconds()) < 1

    with pytest.raises(ApiError) as past:
        admin.api_keys.create(
            request={"expires_at": datetime.now(UTC) - timedelta(hours=1)}, request_options=NO_RETRY
        )
    assert past.value.status_code == 400
    # A time with no UTC equivalent: 400 (its conversion where stored was a 500).
    beyond = httpx.post(
        f"{harness.server.base_url}/v0/api-keys",
        json={"expires_at": "9999-12-31T23:00:00-05:00"},
        headers={"Authorization": f"Bearer {harness.api_key}"},
    )
    assert beyond.status_code == 400 and beyond.json()["code"] == "validation_error"

    time.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.2)
    with pytest.raises(ApiError) as expired:
        client.inboxes.get(mine, request_options=NO_RETRY)
    assert _status(expired) == (401, "unknown_api_key")


def test_label_read_permissions_gate_subscriptions(harness: Harness) -> None:
    """Filtered event types need their label_*_read permission, on webhooks and on the WebSocket."""
    admin, _, mine, _ = _two_inboxes(harness)
    narrow = admin.inboxes.api_keys.create(
        mine, request={"permissions": {"webhook_create": True, "webhook_read": True, "message_read": True}}
    ).api_key
    hook = {"url": "http://127.0.0.1:9/hook", "event_types": ["message.received.blocked"]}
    headers = {"Authorization": f"Bearer {narrow}"}
    refused = httpx.post(f"{harness.server.base_url}/v0/inboxes/{mine}/webhooks", json=hook, headers=headers)
    assert refused.status_code == 403, refused.text

    with connect(f"{harness.server.ws_url}/v0?api_key={narrow}", open_timeout=10) as socket:
        socket.send(json.dumps({"type": "subscribe", "event_types": ["message.received.blocked"]}))
        assert json.loads(socket.recv(timeout=10))["type"] == "error"
        socket.send(json.dumps({"type": "subscribe", "event_types": ["message.received"]}))
        assert json.loads(socket.recv(timeout=10))["type"] == "subscribed"

    wide = admin.inboxes.api_keys.create(
        mine,
        request={"permissions": {"webhook_create": True, "message_read": True, "label_blocked_read": True}},
    ).api_key
    allowed = httpx.post(
        f"{harness.server.base_url}/v0/inboxes/{mine}/webhooks",
        json=hook,
        headers={"Authorization": f"Bearer {wide}"},
    )
    assert allowed.status_code == 200, allowed.text


def test_subscriptions_need_the_read_permission_of_their_events(harness: Harness) -> None:
    """A webhook hands its events (message bodies included) to whoever made it: a key without
    message_read may not subscribe to message events, as on the WebSocket."""
    admin, _, mine, _ = _two_inboxes(harness)
    hooks_only = admin.inboxes.api_keys.create(
        mine, request={"permissions": {"webhook_create": True, "webhook_read": True}}
    ).api_key
    limited = harness.client(api_key=hooks_only)
    hook_url = "http://127.0.0.1:9/hook"
    for create in (
        lambda: limited.inboxes.webhooks.polling.create(
            mine, client_id="p", event_types=["message.received"], request_options=NO_RETRY
        ),
        lambda: limited.inboxes.webhooks.create(
            mine, url=hook_url, event_types=["message.received"], request_options=NO_RETRY
        ),
    ):
        with pytest.raises(ApiError) as refused:
            create()
        assert _status(refused) == (403, "missing_permission")

    # Without event_types (the default set; the SDK always sends them): refused, or narrowed to
    # what the key may read.
    def create_default(key: str) -> httpx.Response:
        return httpx.post(
            f"{harness.server.base_url}/v0/inboxes/{mine}/webhooks",
            json={"url": hook_url},
            headers={"Authorization": f"Bearer {key}"},
        )

    refused_default = create_default(hooks_only)
    assert refused_default.status_code == 403, refused_default.text
    reader = admin.inboxes.api_keys.create(
        mine, request={"permissions": {"webhook_create": True, "message_read": True}}
    ).api_key
    narrowed = create_default(reader)
    assert narrowed.status_code == 200, narrowed.text
    assert "message.received" in narrowed.json()["event_types"]
    assert "domain.verified" not in narrowed.json()["event_types"]


def test_a_client_id_never_hands_over_another_pods_inbox(harness: Harness) -> None:
    """A create with a client_id answers the inbox an earlier create made, only inside the key's scope:
    a pod key naming another pod's client_id was handed that inbox (metadata and all)."""
    admin = harness.client()
    pod_a = admin.pods.create(name="cid-a-" + harness.new_username()).pod_id
    pod_b = admin.pods.create(name="cid-b-" + harness.new_username()).pod_id
    cid = "cid-" + harness.new_username()
    theirs = admin.pods.inboxes.create(pod_a, client_id=cid, metadata={"token": "of-a"})
    pod_key = admin.pods.api_keys.create(pod_b, request={"name": "b"}).api_key
    outsider = harness.client(api_key=pod_key)
    for create in (
        lambda: outsider.inboxes.create(request={"client_id": cid}, request_options=NO_RETRY),
        lambda: outsider.pods.inboxes.create(pod_b, client_id=cid, request_options=NO_RETRY),
    ):
        with pytest.raises(ApiError) as refused:
            create()
        assert _status(refused) == (403, "resource_taken")
        assert theirs.inbox_id not in json.dumps(refused.value.body)
    # Inside the scope it is still the idempotent answer.
    assert admin.inboxes.create(request={"client_id": cid}).inbox_id == theirs.inbox_id
    own = admin.pods.api_keys.create(pod_a, request={"name": "a"}).api_key
    assert harness.client(api_key=own).inboxes.create(request={"client_id": cid}).inbox_id == theirs.inbox_id
