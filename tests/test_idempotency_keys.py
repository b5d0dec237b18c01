"""Idempotency-Key on sends: scope of a replay, and a send that outlives its claim."""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from agentmx.settings import normalize_database_url
from agentmx.testing.server import ServerProcess
from conftest import BACKENDS, Harness
from send_support import wait_for


def _post(server: ServerProcess, key: str, path: str, body: dict[str, object], idem: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": idem}
    return httpx.post(server.base_url + path, json=body, headers=headers, timeout=60)


def test_a_replay_is_not_shown_to_a_key_outside_the_inbox(harness: Harness, http: httpx.Client) -> None:
    """Keys are per organization; a pod key that cannot see the inbox got the ids of its send
    (and of its sent draft) by repeating the request with the same Idempotency-Key."""
    pod_a = http.post("/v0/pods", json={"name": "idem-a-" + harness.new_username()}).json()["pod_id"]
    pod_b = http.post("/v0/pods", json={"name": "idem-b-" + harness.new_username()}).json()["pod_id"]
    a = http.post(f"/v0/pods/{pod_a}/inboxes", json={}).json()["inbox_id"]
    b = http.post(f"/v0/pods/{pod_b}/inboxes", json={}).json()["inbox_id"]
    outsider = http.post(f"/v0/pods/{pod_b}/api-keys", json={"name": "b"}).json()["api_key"]
    body = {"to": b, "subject": "private", "text": "for pod a"}
    idem = "scope-" + secrets.token_hex(6)
    sent = _post(harness.server, harness.api_key, f"/v0/inboxes/{a}/messages/send", body, idem)
    assert sent.status_code == 200
    replay = _post(harness.server, outsider, f"/v0/inboxes/{a}/messages/send", body, idem)
    assert replay.status_code == 404, replay.text
    assert sent.json()["message_id"] not in replay.text

    draft = http.post(f"/v0/inboxes/{a}/drafts", json={"to": [b], "text": "draft"}).json()["draft_id"]
    idem = "scope-draft-" + secrets.token_hex(6)
    path = f"/v0/inboxes/{a}/drafts/{draft}/send"
    assert _post(harness.server, harness.api_key, path, {}, idem).status_code == 200
    replay = _post(harness.server, outsider, path, {}, idem)
    assert replay.status_code == 404, replay.text
    # The owner still gets the replay.
    assert _post(harness.server, harness.api_key, path, {}, idem).status_code == 200


class _HeldAttachment:
    """An attachment URL whose first download waits until released; later ones answer at once."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.requests = 0
        held = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                held.requests += 1
                if held.requests == 1:
                    held.release.wait(60)
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", "5")
                self.end_headers()
                self.wfile.write(b"hello")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/file.txt"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()


@pytest.fixture
def held() -> Iterator[_HeldAttachment]:
    attachment = _HeldAttachment()
    yield attachment
    attachment.close()


def _sql(server: ServerProcess, sql: str, **params: str) -> int:
    url = server.database_url or f"sqlite:///{server.data_dir / 'agentmx.db'}"

    async def run() -> int:
        engine = create_async_engine(normalize_database_url(url))
        try:
            async with engine.begin() as conn:
                result = await conn.execute(text(sql), params)
                return int(result.scalar_one()) if result.returns_rows else result.rowcount
        finally:
            await engine.dispose()

    return asyncio.run(run())


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_send_that_outlives_its_claim_is_not_sent_twice(
    backend: str, fresh_server: Callable[..., ServerProcess], held: _HeldAttachment
) -> None:
    """A retry after the in-flight claim lapsed (5 minutes, made to lapse here) takes the key and sends;
    the first request, still fetching its attachment, then sent a second copy and answered 200."""
    server = fresh_server(backend, env={"AGENTMX_ATTACHMENT_URL_ALLOW_PRIVATE": "true"}).start()
    key = server.create_key()
    headers = {"Authorization": f"Bearer {key}"}
    a = httpx.post(server.base_url + "/v0/inboxes", json={}, headers=headers).json()["inbox_id"]
    b = httpx.post(server.base_url + "/v0/inboxes", json={}, headers=headers).json()["inbox_id"]
    idem = "lapse-" + secrets.token_hex(6)
    body = {"to": b, "subject": "once", "text": "x", "attachments": [{"url": held.url, "filename": "f.txt"}]}
    path = f"/v0/inboxes/{a}/messages/send"
    with ThreadPoolExecutor(max_workers=1) as pool:
        first = pool.submit(_post, server, key, path, body, idem)
        wait_for(lambda: held.requests == 1 or None)
        count = "SELECT count(*) FROM idempotency_keys WHERE key = :k AND state = 'in_flight'"
        assert _sql(server, count, k=idem) == 1
        _sql(server, "UPDATE idempotency_keys SET expires_at = created_at WHERE key = :k", k=idem)
        retry = _post(server, key, path, body, idem)
        assert retry.status_code == 200, retry.text
        held.release.set()
        late = first.result()
    assert late.status_code == 409, late.text
    assert late.json()["code"] == "conflict"
    sent = httpx.get(server.base_url + f"/v0/inboxes/{a}/messages", headers=headers).json()["messages"]
    assert [m["message_id"] for m in sent] == [retry.json()["message_id"]]
    # The key keeps the retry's result.
    assert _post(server, key, path, body, idem).json() == retry.json()


def test_a_final_newline_is_no_client_id_or_header_name(
    harness: Harness, http: httpx.Client, inbox: str
) -> None:
    """The checks used re.match with "$", which also matches before a final newline: "abc\\n" was
    stored as a client_id (another one than "abc"), and a webhook header name ending in one was kept."""
    creates = [
        ("/v0/inboxes", {}),
        ("/v0/pods", {}),
        (f"/v0/inboxes/{inbox}/drafts", {}),
        ("/v0/webhooks", {"url": "http://127.0.0.1:9/hook", "event_types": ["message.received"]}),
        ("/v0/webhooks/polling", {"event_types": ["message.received"]}),
        ("/v0/domains", {"domain": f"d{secrets.token_hex(4)}.example.com"}),
    ]
    for path, body in creates:
        refused = http.post(path, json={**body, "client_id": "cid-" + secrets.token_hex(4) + "\n"})
        assert refused.status_code == 400, (path, refused.text)
        assert refused.json()["code"] == "validation_error"
    hook = {
        "url": "http://127.0.0.1:9/hook",
        "event_types": ["message.received"],
        "headers": {"X-Token\n": "v"},
    }
    refused = http.post("/v0/webhooks", json=hook)
    assert refused.status_code == 400, refused.text


def test_two_idempotency_keys_on_one_request_are_a_400_and_nothing_is_sent(
    harness: Harness, http: httpx.Client, inbox: str
) -> None:
    """The first of two headers won: a retry carrying them in the other order was sent twice."""
    to = http.post("/v0/inboxes", json={}).json()["inbox_id"]
    draft = http.post(f"/v0/inboxes/{inbox}/drafts", json={"to": [to], "subject": "d"}).json()["draft_id"]
    twice = [
        ("Idempotency-Key", "k-" + secrets.token_hex(4)),
        ("Idempotency-Key", "k-" + secrets.token_hex(4)),
    ]
    for path, body in [
        (f"/v0/inboxes/{inbox}/messages/send", {"to": [to], "subject": "s", "text": "t"}),
        (f"/v0/inboxes/{inbox}/drafts/{draft}/send", {}),
    ]:
        refused = http.post(path, json=body, headers=twice)
        assert refused.status_code == 400, (path, refused.text)
        assert refused.json()["code"] == "validation_error"
        assert refused.json()["errors"][0]["path"] == ["Idempotency-Key"]
    assert http.get(f"/v0/inboxes/{inbox}/messages").json()["count"] == 0
    assert http.get(f"/v0/inboxes/{inbox}/drafts/{draft}").status_code == 200
