"""Tenant isolation, route by route, generated from the app's route table.

Tenant A (a pod with an inbox, mail, a draft, a domain, webhooks, polling webhooks, keys and list entries) and
tenant B (another pod and inbox) share one organization. Every route is called with tenant B's
pod key and inbox key, with tenant A's ids in the path: each must be refused (403/404), never
answered, never a 5xx. Routes without ids may answer, but never with any of tenant A's ids.
Then the organization key reads every GET route with the same ids and must succeed, which
proves the fillers name real resources (and that B's calls deleted nothing).

A new route whose path parameter has no filler below fails the test until one is added.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from agentmx.http.app import ROUTERS
from conftest import Harness
from mail_support import make_message, smtp_send

PARAM = re.compile(r"{(\w+)(?::\w+)?}")

# Routes that are not tenant data behind an API key, and why.
EXEMPT = {
    "/health": "liveness probe, no tenant data",
    "/v0/downloads/{token}": "signed, expiring download URL handed out by an authorized read (like a presigned URL)",
    "/v0/drafts/{draft_id}/attachments/{attachment_id}/download": "signed, expiring download URL (see above)",
    "/v0": "the WebSocket; subscriptions to foreign inboxes are checked in test_websocket_refuses_foreign_scope",
    "/v0/webhooks/polling/events": "read with a polling webhook's token, not an API key (test_polling_webhooks)",
}

# GET routes the organization key may not read with tenant A's fillers, and why.
ORG_GET_EXCEPTIONS: dict[str, tuple[int, ...]] = {
    "/v0/domains/{domain_id}/setup-link": (200, 404, 422),
}


@dataclass
class Tenant:
    pod_id: str
    inbox_id: str
    message_id: str = ""
    thread_id: str = ""
    attachment_id: str = ""
    draft_id: str = ""
    draft_attachment_id: str = ""
    domain_id: str = ""
    pod_webhook_id: str = ""
    inbox_webhook_id: str = ""
    pod_polling_id: str = ""
    inbox_polling_id: str = ""
    pod_key_id: str = ""
    inbox_key_id: str = ""
    org_entry: str = ""
    pod_entry: str = ""
    inbox_entry: str = ""
    secrets_: dict[str, str] = field(default_factory=dict)

    def ids(self) -> list[str]:
        """Strings that must never appear in a response to tenant B."""
        values = [
            self.pod_id,
            self.inbox_id,
            self.message_id,
            self.thread_id,
            self.attachment_id,
            self.draft_id,
            self.domain_id,
            self.pod_webhook_id,
            self.inbox_webhook_id,
            self.pod_polling_id,
            self.inbox_polling_id,
            self.pod_key_id,
            self.inbox_key_id,
            self.pod_entry,
            self.inbox_entry,
        ]
        return [v for v in values if v]


def _filler(tenant: Tenant, name: str, path: str) -> list[str]:
    """Values for one path parameter of ``path``: tenant A's resource of that kind."""
    under_inbox = path.startswith("/v0/inboxes/")
    under_pod = path.startswith("/v0/pods/")
    table: dict[str, Callable[[], list[str]]] = {
        "pod_id": lambda: [tenant.pod_id],
        "inbox_id": lambda: [tenant.inbox_id],
        "message_id": lambda: [tenant.message_id],
        "rest": lambda: [
            tenant.message_id,
            tenant.message_id + "/raw",
            f"{tenant.message_id}/attachments/{tenant.attachment_id}",
        ],
        "thread_id": lambda: [tenant.thread_id],
        "attachment_id": lambda: [tenant.draft_attachment_id if "/drafts/" in path else tenant.attachment_id],
        "draft_id": lambda: [tenant.draft_id],
        "domain_id": lambda: [tenant.domain_id],
        "webhook_id": lambda: (
            [tenant.inbox_polling_id if under_inbox else tenant.pod_polling_id]
            if "/webhooks/polling/" in path
            else [tenant.inbox_webhook_id if under_inbox else tenant.pod_webhook_id]
        ),
        "api_key_id": lambda: [tenant.inbox_key_id if under_inbox else tenant.pod_key_id],
        "direction": lambda: ["receive"],
        "list_type": lambda: ["block"],
        "entry": lambda: [
            tenant.inbox_entry if under_inbox else tenant.pod_entry if under_pod else tenant.org_entry
        ],
    }
    if name not in table:
        pytest.fail(f"No isolation filler for path parameter '{name}' in {path}: add one to _filler()")
    return table[name]()


def _routes() -> Iterator[tuple[str, str]]:
    for router in ROUTERS:
        for route in router.routes:
            path = getattr(route, "path", "")
            for method in sorted(getattr(route, "methods", None) or ["WS"]):
                if method != "HEAD":
                    yield method, path


def _urls(tenant: Tenant, path: str) -> list[str]:
    urls = [path]
    for name in PARAM.findall(path):
        placeholder = re.compile(r"{" + name + r"(?::\w+)?}")
        expanded: list[str] = []
        for url in urls:
            for value in _filler(tenant, name, path):
                match = placeholder.search(url)
                assert match is not None
                expanded.append(url[: match.start()] + value + url[match.end() :])
        urls = expanded
    return urls


def _query(path: str) -> dict[str, str]:
    """Query parameters a route needs to answer at all."""
    if path.endswith("/search"):
        return {"q": "secret"}
    if path.endswith("/metrics"):  # the legacy form requires its range
        return {"start_timestamp": "2020-01-01T00:00:00Z", "end_timestamp": "2100-01-01T00:00:00Z"}
    return {}


def _body(method: str, path: str, tenant: Tenant) -> dict[str, Any] | None:
    """A plausible body, so a refusal is about scope and not about a malformed request."""
    if method in ("GET", "DELETE"):
        return None
    if path.endswith("/messages/send") or path.endswith("/forward"):
        return {"to": ["someone@example.com"], "subject": "hi", "text": "hi"}
    if path.endswith("/reply") or path.endswith("/reply-all") or path.endswith("/drafts/{draft_id}/send"):
        return {"text": "hi"}
    if path.endswith("/batch-get"):
        return {"message_ids": [tenant.message_id]}
    if path.endswith("/batch-update"):
        return {"message_ids": [tenant.message_id], "add_labels": ["x"]}
    if path.endswith("/webhooks/polling") and method == "POST":
        return {"client_id": "b-poll", "event_types": ["message.received"]}
    if "/webhooks" in path and method == "POST":
        return {"url": "http://127.0.0.1:9/hook", "event_types": ["message.received"]}
    if "/lists/" in path and method == "POST":
        return {"entry": "someone@example.com"}
    if path.endswith("/domains") and method == "POST":
        return {"domain": f"b-{secrets.token_hex(4)}.example"}
    if "/domains/" in path and method == "PATCH":
        return {"feedback_enabled": True}
    if path.endswith("/headers"):
        return {"headers": {"X-Test": "1"}}
    if "/messages/" in path or "/threads/" in path:
        return {"add_labels": ["x"]}
    if path.endswith("/drafts") or "/drafts/" in path:
        return {"subject": "x"}
    if "/inboxes/{inbox_id}" in path and path.endswith("{inbox_id}"):
        return {"display_name": "x"}
    return {}


def _send(http: httpx.Client, method: str, url: str, **kw: Any) -> httpx.Response:
    """One request; a dropped connection counts as a server error (599), not a crashed test.

    Retried once: after a 500 the server may close a kept-alive connection under the next request.
    """
    for attempt in range(2):
        try:
            return http.request(method, url, **kw)
        except httpx.TransportError as exc:
            if attempt:
                return httpx.Response(599, text=f"transport error: {exc!r}")
    raise AssertionError("unreachable")


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return response.text


def _build_tenant(harness: Harness, http: httpx.Client | None, label: str, mail: bool) -> Tenant:
    client = harness.client()
    pod = client.pods.create(name=f"tenant-{label}-{harness.new_username()}")
    inbox = client.pods.inboxes.create(pod.pod_id, username=f"{label}{harness.new_username()}")
    tenant = Tenant(pod_id=pod.pod_id, inbox_id=inbox.inbox_id)
    if not mail or http is None:
        return tenant

    msg = make_message(
        inbox.inbox_id, subject=f"secret of {label}", attachments=[("a.txt", "text/plain", b"A")]
    )
    smtp_send(harness.server, [inbox.inbox_id], msg.as_bytes())
    stored = client.inboxes.messages.list(inbox.inbox_id).messages[0]
    full = client.inboxes.messages.get(inbox.inbox_id, stored.message_id)
    tenant.message_id, tenant.thread_id = full.message_id, full.thread_id
    tenant.attachment_id = (full.attachments or [])[0].attachment_id

    attachment = {
        "filename": "d.txt",
        "content_type": "text/plain",
        "content": base64.b64encode(b"D").decode(),
    }
    draft = http.post(
        f"/v0/inboxes/{inbox.inbox_id}/drafts",
        json={"to": ["x@example.com"], "subject": "draft", "attachments": [attachment]},
    ).json()
    tenant.draft_id = draft["draft_id"]
    tenant.draft_attachment_id = draft["attachments"][0]["attachment_id"]

    domain = http.post(
        f"/v0/pods/{pod.pod_id}/domains", json={"domain": f"{label}-{secrets.token_hex(4)}.example"}
    )
    tenant.domain_id = domain.json()["domain_id"]
    hook = {"url": "http://127.0.0.1:9/hook", "event_types": ["message.received"]}
    tenant.pod_webhook_id = http.post(f"/v0/pods/{pod.pod_id}/webhooks", json=hook).json()["webhook_id"]
    tenant.inbox_webhook_id = http.post(f"/v0/inboxes/{inbox.inbox_id}/webhooks", json=hook).json()[
        "webhook_id"
    ]

    polling = {"client_id": f"{label}-poll", "event_types": ["message.received"]}
    tenant.pod_polling_id = client.pods.webhooks.polling.create(pod.pod_id, **polling).webhook_id
    tenant.inbox_polling_id = client.inboxes.webhooks.polling.create(inbox.inbox_id, **polling).webhook_id

    tenant.pod_key_id = client.pods.api_keys.create(pod.pod_id, request={"name": "a"}).api_key_id
    tenant.inbox_key_id = client.inboxes.api_keys.create(inbox.inbox_id, request={"name": "a"}).api_key_id
    tenant.org_entry = f"{label}-{secrets.token_hex(4)}.example"
    client.lists.create("receive", "block", entry=tenant.org_entry)
    tenant.pod_entry = client.pods.lists.create(
        pod.pod_id, "receive", "block", entry=f"pod-{label}@x.example"
    ).entry
    tenant.inbox_entry = client.inboxes.lists.create(
        inbox.inbox_id, "receive", "block", entry=f"inbox-{label}@x.example"
    ).entry
    return tenant


def test_route_matrix(harness: Harness) -> None:
    admin_headers = {"Authorization": f"Bearer {harness.api_key}"}
    with httpx.Client(base_url=harness.server.base_url, headers=admin_headers, timeout=30) as http:
        a = _build_tenant(harness, http, "a", mail=True)
        b = _build_tenant(harness, http, "b", mail=False)
        admin = harness.client()
        # A second inbox in A's own pod: its key must not reach the first inbox either.
        sibling = admin.pods.inboxes.create(a.pod_id, username=f"sib{harness.new_username()}").inbox_id
        keys = {
            "pod key of B": admin.pods.api_keys.create(b.pod_id, request={}).api_key,
            "inbox key of B": admin.inboxes.api_keys.create(b.inbox_id, request={}).api_key,
            "inbox key of A's sibling inbox": admin.inboxes.api_keys.create(sibling, request={}).api_key,
        }
        # What each key must never see; the sibling legitimately sees its own pod's id.
        leaks = {who: a.ids() for who in keys}
        leaks["inbox key of A's sibling inbox"] = [v for v in a.ids() if v != a.pod_id]
        failures: list[str] = []
        checked = 0
        try:
            for method, path in _routes():
                if path in EXEMPT:
                    continue
                has_ids = bool(PARAM.search(path))
                for url in _urls(a, path):
                    for who, key in keys.items():
                        response = _send(
                            http,
                            method,
                            url,
                            params=_query(path),
                            json=_body(method, path, a),
                            headers={"Authorization": f"Bearer {key}"},
                        )
                        checked += 1
                        status = response.status_code
                        body = _json(response)
                        text = json.dumps(body) if not isinstance(body, str) else body
                        where = f"{who}: {method} {url} -> {status} {text[:200]}"
                        if status >= 500:
                            failures.append("server error " + where)
                        elif has_ids and status not in (403, 404):
                            failures.append("not refused " + where)
                        elif who.startswith("inbox key") and path.startswith("/v0/pods/") and status != 403:
                            failures.append("inbox key on a pod route must be 403: " + where)
                        elif 200 <= status < 300 and any(leak in text for leak in leaks[who]):
                            failures.append("tenant A data in " + where)

            # The fillers name real resources: the organization key reads every GET route.
            for method, path in _routes():
                if method != "GET" or path in EXEMPT or not PARAM.search(path):
                    continue
                for url in _urls(a, path):
                    status = _send(http, "GET", url, params=_query(path)).status_code
                    allowed = ORG_GET_EXCEPTIONS.get(path, (200,))
                    if status not in allowed:
                        failures.append(f"organization key: GET {url} -> {status} (filler broken?)")
        finally:
            admin.lists.delete("receive", "block", a.org_entry)
            admin.lists.delete("receive", "block", b.org_entry) if b.org_entry else None
        assert checked > 100
        assert not failures, "\n".join(failures)


def test_websocket_refuses_foreign_scope(harness: Harness) -> None:
    """B's keys cannot subscribe to A's inbox or pod, and never receive A's events."""
    admin = harness.client()
    a = _build_tenant(harness, None, "wa", mail=False)
    b = _build_tenant(harness, None, "wb", mail=False)
    for key in (
        admin.pods.api_keys.create(b.pod_id, request={}).api_key,
        admin.inboxes.api_keys.create(b.inbox_id, request={}).api_key,
    ):
        url = f"{harness.server.ws_url}/v0?api_key={key}"
        with connect(url, open_timeout=10) as socket:
            socket.send(json.dumps({"type": "subscribe", "inbox_ids": [a.inbox_id]}))
            assert json.loads(socket.recv(timeout=10))["type"] == "error"
            socket.send(json.dumps({"type": "subscribe", "pod_ids": [a.pod_id]}))
            assert json.loads(socket.recv(timeout=10))["type"] == "error"
            socket.send(json.dumps({"type": "subscribe"}))  # everything the key may see
            assert json.loads(socket.recv(timeout=10))["type"] == "subscribed"

            smtp_send(harness.server, [a.inbox_id], make_message(a.inbox_id, subject="for A").as_bytes())
            smtp_send(harness.server, [b.inbox_id], make_message(b.inbox_id, subject="for B").as_bytes())
            frame = json.loads(socket.recv(timeout=15))
            assert frame["type"] == "event" and frame["message"]["inbox_id"] == b.inbox_id
            assert a.inbox_id not in json.dumps(frame) and a.pod_id not in json.dumps(frame)


def test_webhook_subscription_refuses_foreign_scope(harness: Harness) -> None:
    """A pod key of B cannot point a webhook (push or polling) at A's pod or inbox: refused as not found
    (a foreign pod in pod_ids was silently dropped), while naming its own pod or inbox is fine."""
    admin = harness.client()
    a = _build_tenant(harness, None, "ha", mail=False)
    b = _build_tenant(harness, None, "hb", mail=False)
    key = admin.pods.api_keys.create(b.pod_id, request={}).api_key
    hook = {"url": "http://127.0.0.1:9/hook", "event_types": ["message.received"]}
    poll = {"event_types": ["message.received"], "client_id": "own-" + harness.new_username()}
    with httpx.Client(base_url=harness.server.base_url, headers={"Authorization": f"Bearer {key}"}) as http:
        for path, base in (("/v0/webhooks", hook), ("/v0/webhooks/polling", poll)):
            for body in ({**base, "pod_ids": [a.pod_id]}, {**base, "inbox_ids": [a.inbox_id]}):
                response = http.post(path, json=body)
                assert response.status_code == 400, response.text
                assert "not found" in response.json()["message"]
            own = http.post(path, json={**base, "pod_ids": [b.pod_id], "inbox_ids": [b.inbox_id]})
            assert own.status_code == 200, own.text
            assert own.json()["pod_id"] == b.pod_id and own.json().get("inbox_ids") == [b.inbox_id]
        mine = http.post("/v0/webhooks", json=hook)
        assert mine.status_code == 200, mine.text
        update = http.patch(f"/v0/webhooks/{mine.json()['webhook_id']}", json={"add_inbox_ids": [a.inbox_id]})
        assert update.status_code in (400, 403, 404), update.text


# Routes any valid key may call, whatever its permissions.
NO_PERMISSION_NEEDED = {
    "/v0/auth/me": "the caller's own identity",
    "/v0/organizations": "API.md 2.10 names no permission for it; it needs an organization key instead",
}


def test_every_route_checks_a_permission(harness: Harness) -> None:
    """An organization key with an empty permissions object is refused everywhere (403 missing_permission)."""
    admin_headers = {"Authorization": f"Bearer {harness.api_key}"}
    with httpx.Client(base_url=harness.server.base_url, headers=admin_headers, timeout=30) as http:
        a = _build_tenant(harness, http, "perm", mail=True)
        nothing = harness.client().api_keys.create(request={"name": "nothing", "permissions": {}}).api_key
        failures: list[str] = []
        try:
            for method, path in _routes():
                if path in EXEMPT or path in NO_PERMISSION_NEEDED:
                    continue
                for url in _urls(a, path):
                    response = _send(
                        http,
                        method,
                        url,
                        params=_query(path),
                        json=_body(method, path, a),
                        headers={"Authorization": f"Bearer {nothing}"},
                    )
                    body = _json(response)
                    code = body.get("code") if isinstance(body, dict) else None
                    if response.status_code != 403 or code != "missing_permission":
                        failures.append(f"{method} {url} -> {response.status_code} {str(body)[:160]}")
        finally:
            harness.client().lists.delete("receive", "block", a.org_entry)
        assert not failures, "routes without a permission check:\n" + "\n".join(failures)


# The read permission (API.md 2.10) of each resource family, matched on the path's segments, most
# specific first.
READ_PERMISSION = [
    ("metrics", "metrics_read"),
    ("lists", "list_entry_read"),
    ("api-keys", "api_key_read"),
    ("webhooks", "webhook_read"),
    ("domains", "domain_read"),
    ("drafts", "draft_read"),
    ("threads", "message_read"),
    ("messages", "message_read"),
    ("events", "message_read"),
    ("inboxes", "inbox_read"),
    ("pods", "pod_read"),
]


def _read_permission(path: str) -> str:
    segments = path.split("/")
    for family, permission in READ_PERMISSION:
        if family in segments:
            return permission
    pytest.fail(f"No read permission known for {path}: add its family to READ_PERMISSION")


def test_read_routes_need_only_their_read_permission(harness: Harness) -> None:
    """Each GET route answers an organization key holding just that family's read permission."""
    admin = harness.client()
    admin_headers = {"Authorization": f"Bearer {harness.api_key}"}
    with httpx.Client(base_url=harness.server.base_url, headers=admin_headers, timeout=30) as http:
        a = _build_tenant(harness, http, "read", mail=True)
        keys: dict[str, str] = {}
        failures: list[str] = []
        try:
            for method, path in _routes():
                if method != "GET" or path in EXEMPT or path in NO_PERMISSION_NEEDED:
                    continue
                permission = _read_permission(path)
                if permission not in keys:
                    request = {"name": permission, "permissions": {permission: True}}
                    keys[permission] = admin.api_keys.create(request=request).api_key
                for url in _urls(a, path):
                    response = _send(
                        http,
                        "GET",
                        url,
                        params=_query(path),
                        headers={"Authorization": f"Bearer {keys[permission]}"},
                    )
                    allowed = ORG_GET_EXCEPTIONS.get(path, (200,))
                    if response.status_code not in allowed:
                        failures.append(
                            f"{permission}: GET {url} -> {response.status_code} {response.text[:160]}"
                        )
        finally:
            admin.lists.delete("receive", "block", a.org_entry)
        assert not failures, "\n".join(failures)


def test_an_inbox_keys_webhook_names_no_other_inbox_or_pod(harness: Harness) -> None:
    """An inbox key's webhook (created on /v0/webhooks) is its inbox's: listing a neighbour inbox of
    the same pod, or a pod, is refused (400) rather than silently dropped."""
    admin = harness.client()
    a = _build_tenant(harness, None, "ia", mail=False)
    neighbour = admin.pods.inboxes.create(a.pod_id, username="n" + harness.new_username()).inbox_id
    key = admin.inboxes.api_keys.create(a.inbox_id, request={}).api_key
    hook = {"url": "http://127.0.0.1:9/hook", "event_types": ["message.received"]}
    with httpx.Client(base_url=harness.server.base_url, headers={"Authorization": f"Bearer {key}"}) as http:
        for body in ({**hook, "inbox_ids": [neighbour]}, {**hook, "pod_ids": [a.pod_id]}):
            response = http.post("/v0/webhooks", json=body)
            assert response.status_code == 400, (body, response.text)
        own = http.post("/v0/webhooks", json={**hook, "inbox_ids": [a.inbox_id]})
        assert own.status_code == 200, own.text
        assert own.json()["inbox_id"] == a.inbox_id


def _event_of(harness: Harness, tenant: Tenant) -> str:
    """The id of a message.received event in ``tenant``'s inbox, read by the organization key."""
    with connect(f"{harness.server.ws_url}/v0?api_key={harness.api_key}", open_timeout=10) as socket:
        socket.send(json.dumps({"type": "subscribe", "inbox_ids": [tenant.inbox_id]}))
        assert json.loads(socket.recv(timeout=10))["type"] == "subscribed"
        smtp_send(harness.server, [tenant.inbox_id], make_message(tenant.inbox_id).as_bytes())
        frame = json.loads(socket.recv(timeout=15))
        assert frame["type"] == "event", frame
        return str(frame["event_id"])


def test_resuming_after_another_pods_event_is_not_found(harness: Harness) -> None:
    """A WebSocket resume (after_event_id) or polling read (after) naming another pod's event answers as
    for an id that never existed: it told a pod key which of A's event ids exist, and where in the log."""
    admin = harness.client()
    a = _build_tenant(harness, None, "ra", mail=False)
    b = _build_tenant(harness, None, "rb", mail=False)
    foreign, own = _event_of(harness, a), _event_of(harness, b)
    for key in (
        admin.pods.api_keys.create(b.pod_id, request={}).api_key,
        admin.inboxes.api_keys.create(b.inbox_id, request={}).api_key,
    ):
        answers = {}
        for event_id in (foreign, "evt_never_existed", own):
            with connect(f"{harness.server.ws_url}/v0?api_key={key}", open_timeout=10) as socket:
                socket.send(json.dumps({"type": "subscribe", "after_event_id": event_id}))
                frame = json.loads(socket.recv(timeout=10))
                answers[event_id] = (frame["type"], frame.get("name"))
        assert answers[foreign] == answers["evt_never_existed"] == ("error", "NotFoundError"), answers
        assert answers[own][0] == "subscribed"

    headers = {"Authorization": f"Bearer {harness.api_key}"}
    with httpx.Client(base_url=harness.server.base_url, headers=headers) as http:
        body = {"client_id": "resume-" + harness.new_username(), "event_types": ["message.received"]}
        made = http.post(f"/v0/pods/{b.pod_id}/webhooks/polling", json=body)
        assert made.status_code == 200, made.text
        token = made.json()["token"]
    for event_id, status in ((foreign, 400), ("evt_never_existed", 400), (own, 200)):
        read = httpx.get(
            f"{harness.server.base_url}/v0/webhooks/polling/events",
            params={"after": event_id},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert read.status_code == status, (event_id, read.text)
