"""The bytes of deleted mail are deleted too, once no message, attachment or draft names them.

Blobs are shared (the local copies of one delivery name one raw message; equal attachments are
stored once), so what is checked is that bytes go when their last naming row goes, and only then.
Each backend runs with blobs in the database (the default) and as files (inline limit 0).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from agentmail import AgentMail
from agentmail.environment import AgentMailEnvironment

from agentmx.testing import postgres
from agentmx.testing.server import ServerProcess
from conftest import make_server
from mail_support import SlowGet, download, make_message, smtp_send

DELAY = 1.0  # AGENTMX_BLOB_GC_DELAY: passes every 0.5 s
ATTACHMENT = b"quarterly figures " * 64


class Served:
    def __init__(self, server: ServerProcess, as_files: bool) -> None:
        self.server, self.as_files = server, as_files
        env = AgentMailEnvironment(http=server.base_url, websockets=server.ws_url)
        self.client = AgentMail(api_key=server.create_key(), environment=env)

    def urls(self, inbox: str, message_id: str) -> list[str]:
        """The download URLs of a message's raw .eml and of each attachment."""
        got = self.client.inboxes.messages.get(inbox, message_id)
        urls = [self.client.inboxes.messages.get_raw(inbox, message_id).download_url]
        for att in got.attachments or []:
            urls.append(
                self.client.inboxes.messages.get_attachment(inbox, message_id, att.attachment_id).download_url
            )
        return urls

    def blob_files(self) -> set[Path]:
        root = self.server.data_dir / "blobs"
        return {p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")}


@pytest.fixture(
    scope="module",
    params=[("sqlite", False), ("sqlite", True), ("postgres", False), ("postgres", True)],
    ids=["sqlite-inline", "sqlite-files", "postgres-inline", "postgres-files"],
)
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    backend, as_files = request.param
    env = {"AGENTMX_BLOB_GC_DELAY": str(DELAY)}
    if as_files:
        env["AGENTMX_BLOB_INLINE_MAX_BYTES"] = "0"
    server, url = make_server(tmp_path_factory.mktemp(f"blob-gc-{backend}"), backend, env)
    server.start()
    try:
        yield Served(server, as_files)
    finally:
        server.stop()
        if url:
            postgres.drop_database(url)


def eventually(check: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def what_link_names(url: str) -> list[Any]:
    """A download link's signed fields but its expiry: [blob key, content type, file name]."""
    payload = url.rsplit("/", 1)[1].split(".", 1)[0]
    fields = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return [fields[0], *fields[2:]]


def gone(urls: list[str]) -> Callable[[], bool]:
    return lambda: all(download(url).status_code == 404 for url in urls)


def deliver(served: Served, inboxes: list[str], subject: str) -> str:
    """A message with an attachment of its own (equal bytes would be stored once)."""
    data = ATTACHMENT + subject.encode()
    msg = make_message(inboxes[0], subject=subject, attachments=[("figures.txt", "text/plain", data)])
    smtp_send(served.server, inboxes, msg.as_bytes())
    return str(msg["Message-ID"])


def test_a_deleted_message_takes_its_bytes_along(served: Served) -> None:
    client = served.client
    inbox = client.inboxes.create().inbox_id
    kept = deliver(served, [inbox], "kept")
    dropped = make_message(
        inbox, subject="dropped", attachments=[("other.bin", "application/octet-stream", b"x" * 999)]
    )
    before = served.blob_files()
    smtp_send(served.server, [inbox], dropped.as_bytes())
    files = served.blob_files() - before
    urls = served.urls(inbox, dropped["Message-ID"])
    assert all(download(url).status_code == 200 for url in urls)

    client.inboxes.messages.delete(inbox, dropped["Message-ID"])
    assert eventually(gone(urls))
    for url in served.urls(inbox, kept):
        assert download(url).status_code == 200
    assert len(files) == (2 if served.as_files else 0)  # the raw message and its attachment
    assert files.isdisjoint(served.blob_files())


def test_shared_bytes_stay_while_anything_names_them(served: Served) -> None:
    client = served.client
    a, b = client.inboxes.create().inbox_id, client.inboxes.create().inbox_id
    message_id = deliver(served, [a, b], "to both")  # one raw message and one attachment, named twice
    urls = served.urls(b, message_id)
    # Links name bytes: both copies name the same ones (the expiry in each link may differ by a second).
    assert [what_link_names(u) for u in urls] == [what_link_names(u) for u in served.urls(a, message_id)]

    client.inboxes.messages.delete(a, message_id)
    time.sleep(DELAY * 4)  # several passes past the delay
    assert (
        download(urls[0]).content.endswith(b"\r\n") and download(urls[1]).content == ATTACHMENT + b"to both"
    )

    client.inboxes.delete(b)  # the last copy goes with its inbox (a cascade)
    assert eventually(gone(urls))


def test_bytes_stored_again_after_being_collected_are_whole(served: Served) -> None:
    client = served.client
    inbox = client.inboxes.create().inbox_id
    msg = make_message(inbox, subject="again", attachments=[("again.txt", "text/plain", b"again " * 100)])
    smtp_send(served.server, [inbox], msg.as_bytes())
    urls = served.urls(inbox, msg["Message-ID"])
    client.inboxes.messages.delete(inbox, msg["Message-ID"])
    assert eventually(gone(urls))
    smtp_send(served.server, [inbox], msg.as_bytes())
    again = served.urls(inbox, msg["Message-ID"])
    assert download(again[1]).content == b"again " * 100
    assert download(again[0]).status_code == 200


def test_draft_attachments_go_with_the_draft_and_stay_with_the_message_it_became(served: Served) -> None:
    client = served.client
    inbox = client.inboxes.create().inbox_id
    other = client.inboxes.create().inbox_id

    def draft_with(data: bytes) -> tuple[str, str]:
        draft = client.inboxes.drafts.create(
            inbox,
            to=[other],
            subject="draft",
            text="see attached",
            attachments=[{"filename": "d.bin", "content": base64.b64encode(data).decode()}],
        )
        assert draft.attachments is not None
        att = draft.attachments[0].attachment_id
        return draft.draft_id, client.inboxes.drafts.get_attachment(inbox, draft.draft_id, att).download_url

    dropped, dropped_url = draft_with(b"dropped draft " * 50)
    sent, sent_url = draft_with(b"sent draft " * 50)
    client.inboxes.drafts.delete(inbox, dropped)
    result = client.inboxes.drafts.send(inbox, sent)
    assert eventually(gone([dropped_url]))
    assert download(sent_url).content == b"sent draft " * 50  # now named by the sent message
    message = client.inboxes.messages.get(inbox, result.message_id)
    assert message.attachments is not None
    att = message.attachments[0].attachment_id
    url = client.inboxes.messages.get_attachment(inbox, result.message_id, att).download_url
    assert download(url).content == b"sent draft " * 50


def test_files_nothing_names_are_found_and_deleted(served: Served) -> None:
    """Written for a transaction that then failed (or for mail deleted before the collector came)."""
    client = served.client
    inbox = client.inboxes.create().inbox_id
    message_id = deliver(served, [inbox], "named, and long unused")
    named_files = served.blob_files()
    data = b"bytes a failed transaction left behind"
    key = hashlib.sha256(data).hexdigest()
    orphan = served.server.data_dir / "blobs" / key[:2] / key[2:4] / key
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(data)
    an_hour_ago = time.time() - 3600
    for path in [orphan, *named_files]:
        os.utime(path, (an_hour_ago, an_hour_ago))

    assert eventually(lambda: not orphan.exists(), timeout=20)
    assert named_files <= served.blob_files()  # still named by messages
    for url in served.urls(inbox, message_id):
        assert download(url).status_code == 200


def test_a_download_under_way_outlives_the_collection_of_its_bytes(served: Served) -> None:
    """A file the collector removes while a client reads it is still sent whole; a new request is 404.
    (Served in chunks, a file opened only once its headers were sent was cut short of them.)"""
    client = served.client
    inbox = client.inboxes.create().inbox_id
    data = os.urandom(3 * 1024 * 1024)
    draft = client.inboxes.drafts.create(
        inbox, attachments=[{"filename": "d.bin", "content": base64.b64encode(data).decode()}]
    )
    (att,) = draft.attachments or []
    url = client.inboxes.drafts.get_attachment(inbox, draft.draft_id, att.attachment_id).download_url
    reader = SlowGet(url, receive_buffer=16 * 1024)
    try:
        assert reader.status == 200 and reader.headers["content-length"] == str(len(data))
        client.inboxes.drafts.delete(inbox, draft.draft_id)
        assert eventually(gone([url]))
        assert reader.read_rest() == data
    finally:
        reader.close()
