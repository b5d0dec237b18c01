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
from websockets.exceptions import InvalidStatus
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


def test_a_key_cannot_change_or_delete_a_stronger_key(harness: Harness) -> None:
    """A key holding api_key_update/delete acts only on keys with no more power than itself: a narrow
    key renamed, demoted or deleted the unrestricted key above it (organization and pod scope alike)."""
    admin, pod_id, mine, _ = _two_inboxes(harness)
    managers = {"api_key_read": True, "api_key_update": True, "api_key_delete": True}

    def as_key(key: str) -> httpx.Client:
        return httpx.Client(base_url=harness.server.base_url, headers={"Authorization": f"Bearer {key}"})

    with as_key(harness.api_key) as root:
        for prefix in ("/v0/api-keys", f"/v0/pods/{pod_id}/api-keys"):

            def make(body: dict[str, Any], prefix: str = prefix) -> dict[str, Any]:
                made = root.post(prefix, json=body)
                assert made.status_code == 200, made.text
                return dict(made.json())

            strong = make({"name": "strong"})
            wider = make({"name": "wider", "permissions": {**managers, "inbox_delete": True}})
            manager = make({"name": "manager", "permissions": managers})
            weaker = admin.inboxes.api_keys.create(mine, request={"permissions": {"api_key_read": True}})
            with as_key(manager["api_key"]) as weak:
                for target in (strong, wider):
                    url = f"{prefix}/{target['api_key_id']}"
                    for response in (
                        weak.patch(url, json={"name": "pwned"}),
                        weak.patch(url, json={"permissions": {}}),
                        weak.delete(url),
                    ):
                        assert response.status_code == 403, response.text
                        assert response.json()["code"] == "permission_escalation"
                    assert root.get(f"/v0/api-keys/{target['api_key_id']}").json()["name"] == target["name"]
                # Keys with no more power than itself, itself included, it may manage.
                mine_url = f"{prefix}/{manager['api_key_id']}"
                assert weak.patch(mine_url, json={"name": "me"}).status_code == 200
                assert weak.delete(f"{prefix}/{weaker.api_key_id}").status_code == 204
            # A key that expires cannot remove one that does not.
            soon = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
            brief = make({"permissions": managers, "expires_at": soon})
            with as_key(brief["api_key"]) as short_lived:
                outlives = short_lived.delete(mine_url)
                assert outlives.status_code == 403 and outlives.json()["code"] == "permission_escalation"
            with as_key(manager["api_key"]) as weak:
                assert weak.delete(mine_url).status_code == 204  # itself


def test_two_authorization_headers_are_refused(harness: Harness) -> None:
    """Two Authorization headers are ambiguous credentials: 401, whichever comes first (the first won)."""
    base, good = harness.server.base_url, f"Bearer {harness.api_key}"
    other = f"Bearer {harness.client().api_keys.create(request={'name': 'second'}).api_key}"
    inbox = harness.client().inboxes.create().inbox_id
    for path in ("/v0/inboxes", f"/v0/inboxes/{inbox}/messages", "/v0/webhooks/polling/events"):
        for pair in ((good, "Bearer am_unknown"), (good, good), (good, other)):
            response = httpx.get(
                base + path, headers=[("Authorization", pair[0]), ("Authorization", pair[1])]
            )
            assert response.status_code == 401, (path, response.text)
            assert response.json()["name"] == "UnauthorizedError"
            assert response.json()["code"] == "ambiguous_authorization"
    ws = f"{harness.server.ws_url}/v0"
    for kwargs in (
        {"additional_headers": [("Authorization", good), ("Authorization", good)]},
        {"uri": f"{ws}?api_key={harness.api_key}&api_key={harness.api_key}"},
    ):
        with pytest.raises(InvalidStatus) as denied:
            connect(kwargs.pop("uri", ws), open_timeout=10, **kwargs).close()
        assert denied.value.response.status_code == 401
        assert json.loads(denied.value.response.body)["code"] == "ambiguous_authorization"
    assert httpx.get(base + "/v0/inboxes", headers={"Authorization": good}).status_code == 200
