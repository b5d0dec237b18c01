"""A refused send or draft never fetches its URL attachments: every refusal that does not depend on
the downloaded bytes comes first, so a bad request causes no outbound HTTP at all."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentmx.testing.server import ServerProcess
from conftest import BACKENDS, make_server
from file_server import FileServer
from send_support import ext


class CountingFiles(FileServer):
    """Answers every GET of its one file with a few bytes, and counts the requests."""

    def __init__(self) -> None:
        super().__init__({"/file.txt": ({"Content-Type": "text/plain"}, b"attachment bytes")})
        self.url = self.base + "/file.txt"

    @property
    def count(self) -> int:
        return len(self.requests)


class Setup:
    def __init__(self, server: ServerProcess, files: CountingFiles) -> None:
        self.server = server
        self.files = files
        self.http = self.client(server.create_key())

    def client(self, key: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.server.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30
        )

    def new_inbox(self) -> str:
        username = "f" + secrets.token_hex(5)
        return str(self.http.post("/v0/inboxes", json={"username": username}).json()["inbox_id"])

    def attachment(self) -> dict[str, str]:
        return {"filename": "file.txt", "url": self.files.url}


@pytest.fixture(scope="module", params=BACKENDS)
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    from agentmx.testing import postgres

    files = CountingFiles()
    env = {"AGENTMX_ATTACHMENT_URL_ALLOW_PRIVATE": "true"}  # the file server is on loopback
    server, url = make_server(Path(tmp_path_factory.mktemp(f"fetch-{request.param}")), request.param, env)
    server.start()
    try:
        yield Setup(server, files)
    finally:
        server.stop()
        files.stop()
        if url:
            postgres.drop_database(url)


def _refused_without_fetch(setup: Setup, response: httpx.Response, status: int, before: int) -> None:
    assert response.status_code == status, response.text
    assert "message" in response.json()  # the API's error shape
    assert setup.files.count == before, "a refused request fetched its URL attachment"


def test_refused_sends_fetch_nothing(setup: Setup) -> None:
    inbox = setup.new_inbox()
    url = setup.attachment()
    before = setup.files.count
    cases: list[tuple[str, dict[str, Any], int]] = [
        ("/v0/inboxes/nobody@nowhere.test/messages/send", {"to": ext(), "attachments": [url]}, 404),
        (f"/v0/inboxes/{inbox}/messages/send", {"to": "not an address", "attachments": [url]}, 400),
        (f"/v0/inboxes/{inbox}/messages/send", {"text": "no recipients", "attachments": [url]}, 422),
        (
            f"/v0/inboxes/{inbox}/messages/send",
            {"to": ext(), "labels": ["received"], "attachments": [url]},
            400,
        ),
        (
            f"/v0/inboxes/{inbox}/messages/send",
            {"to": ext(), "headers": {"a:b": "x"}, "attachments": [url]},
            400,
        ),
        (
            f"/v0/inboxes/{inbox}/messages/send",
            {"to": ext(), "headers": {"X-Ok": "line\r\nbreak"}, "attachments": [url]},
            400,
        ),
        # A later attachment's own fault refuses the message before the earlier one is fetched.
        (
            f"/v0/inboxes/{inbox}/messages/send",
            {"to": ext(), "attachments": [url, {"filename": "x", "content": "not base64!"}]},
            400,
        ),
        (f"/v0/inboxes/{inbox}/messages/<nope@x.test>/reply", {"text": "x", "attachments": [url]}, 404),
        (f"/v0/inboxes/{inbox}/messages/<nope@x.test>/forward", {"to": ext(), "attachments": [url]}, 404),
    ]
    for path, body, status in cases:
        _refused_without_fetch(setup, setup.http.post(path, json=body), status, before)


def test_blocked_recipient_fetches_nothing(setup: Setup) -> None:
    inbox = setup.new_inbox()
    stranger = ext()
    created = setup.http.post(f"/v0/inboxes/{inbox}/lists/send/block", json={"entry": stranger})
    assert created.status_code == 200, created.text
    before = setup.files.count
    body = {"to": stranger, "attachments": [setup.attachment()]}
    _refused_without_fetch(
        setup, setup.http.post(f"/v0/inboxes/{inbox}/messages/send", json=body), 403, before
    )


def test_idempotent_replay_fetches_once(setup: Setup) -> None:
    inbox = setup.new_inbox()
    body = {"to": ext(), "text": "x", "attachments": [setup.attachment()]}
    headers = {"Idempotency-Key": secrets.token_hex(8)}
    before = setup.files.count
    first = setup.http.post(f"/v0/inboxes/{inbox}/messages/send", json=body, headers=headers)
    again = setup.http.post(f"/v0/inboxes/{inbox}/messages/send", json=body, headers=headers)
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    assert setup.files.count == before + 1


def test_draft_with_existing_client_id_fetches_nothing(setup: Setup) -> None:
    inbox = setup.new_inbox()
    client_id = secrets.token_hex(6)
    body = {"to": ext(), "client_id": client_id, "attachments": [setup.attachment()]}
    before = setup.files.count
    first = setup.http.post(f"/v0/inboxes/{inbox}/drafts", json=body)
    assert first.status_code == 200, first.text
    assert setup.files.count == before + 1
    again = setup.http.post(f"/v0/inboxes/{inbox}/drafts", json=body)
    assert again.status_code == 200, again.text
    assert again.json()["draft_id"] == first.json()["draft_id"]
    assert setup.files.count == before + 1, "the retry fetched the attachment again"


def test_refused_drafts_fetch_nothing(setup: Setup) -> None:
    inbox = setup.new_inbox()
    url = setup.attachment()
    drafts = f"/v0/inboxes/{inbox}/drafts"
    before = setup.files.count
    cases: list[tuple[dict[str, Any], int]] = [
        ({"to": "not an address", "attachments": [url]}, 400),
        ({"subject": "line\nbreak", "attachments": [url]}, 400),
        ({"labels": ["sent"], "attachments": [url]}, 400),
        ({"client_id": "bad id!", "attachments": [url]}, 400),
        ({"in_reply_to": "<a@x.test>", "forward_of": "<b@x.test>", "attachments": [url]}, 400),
        ({"reply_all": True, "attachments": [url]}, 400),
        ({"in_reply_to": "<nope@x.test>", "attachments": [url]}, 404),
        ({"to": [ext() for _ in range(60)], "attachments": [url]}, 400),
        ({"to": ext(), "attachments": [url, {"content": "not base64!"}]}, 400),
    ]
    for body, status in cases:
        _refused_without_fetch(setup, setup.http.post(drafts, json=body), status, before)
    _refused_without_fetch(
        setup,
        setup.http.post("/v0/inboxes/nobody@nowhere.test/drafts", json={"attachments": [url]}),
        404,
        before,
    )

    draft = setup.http.post(drafts, json={"to": ext()}).json()["draft_id"]
    for body, status in [
        ({"to": "not an address", "add_attachments": [url]}, 400),
        ({"add_labels": ["bounced"], "add_attachments": [url]}, 400),
        ({"subject": "line\nbreak", "add_attachments": [url]}, 400),
    ]:
        _refused_without_fetch(setup, setup.http.patch(f"{drafts}/{draft}", json=body), status, before)


def test_missing_permission_fetches_nothing(setup: Setup) -> None:
    inbox = setup.new_inbox()
    created = setup.http.post(
        f"/v0/inboxes/{inbox}/api-keys",
        json={"permissions": {"draft_create": True, "draft_send": False, "message_read": False}},
    )
    assert created.status_code == 200, created.text
    limited = setup.client(created.json()["api_key"])
    url = setup.attachment()
    before = setup.files.count
    drafts = f"/v0/inboxes/{inbox}/drafts"
    for body in (
        {"to": ext(), "send_at": "2030-01-01T00:00:00Z", "attachments": [url]},  # scheduling is sending
        {"in_reply_to": "<a@x.test>", "attachments": [url]},  # a reply reads the original
    ):
        _refused_without_fetch(setup, limited.post(drafts, json=body), 403, before)
