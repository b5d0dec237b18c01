"""Where stored bytes live: small blobs in the database, big ones as files, both read the same way."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from agentmail import AgentMail
from agentmail.environment import AgentMailEnvironment

from agentmx.testing.server import ServerProcess
from conftest import Harness
from mail_support import download, make_message, smtp_send

BIG = os.urandom(100_000)  # over the default 64 KiB inline limit


def blob_file(server: ServerProcess, data: bytes) -> Path:
    key = hashlib.sha256(data).hexdigest()
    return server.data_dir / "blobs" / key[:2] / key[2:4] / key


def raw_and_attachments(client: AgentMail, inbox_id: str) -> tuple[bytes, dict[str | None, bytes]]:
    item = client.inboxes.messages.list(inbox_id).messages[0]
    raw = download(client.inboxes.messages.get_raw(inbox_id, item.message_id).download_url).content
    files = {}
    for att in item.attachments or []:
        link = client.inboxes.messages.get_attachment(inbox_id, item.message_id, att.attachment_id)
        files[att.filename] = download(link.download_url).content
    return raw, files


def test_small_blobs_are_rows_and_big_ones_files(harness: Harness) -> None:
    client = harness.client()
    first, second, third = (client.inboxes.create() for _ in range(3))
    small = os.urandom(2_000)
    msg = make_message(first.inbox_id, attachments=[("small.bin", "application/octet-stream", small)])
    # Two recipients in one transaction: one row of each blob serves both messages.
    smtp_send(harness.server, [first.inbox_id, second.inbox_id], msg.as_bytes())
    for inbox in (first, second):
        raw, files = raw_and_attachments(client, inbox.inbox_id)
        assert raw.endswith(msg.as_bytes()) and files == {"small.bin": small}
        assert not blob_file(harness.server, raw).exists()
    assert not blob_file(harness.server, small).exists()

    big = make_message(third.inbox_id, attachments=[("big.bin", "application/octet-stream", BIG)])
    smtp_send(harness.server, [third.inbox_id], big.as_bytes())
    raw, files = raw_and_attachments(client, third.inbox_id)
    assert raw.endswith(big.as_bytes()) and files == {"big.bin": BIG}
    assert blob_file(harness.server, raw).exists() and blob_file(harness.server, BIG).exists()


def test_files_written_before_inline_storage_still_read(fresh_server: Callable[..., ServerProcess]) -> None:
    server = fresh_server("sqlite", env={"AGENTMX_BLOB_INLINE_MAX_BYTES": "0"}).start()
    env = AgentMailEnvironment(http=server.base_url, websockets=server.ws_url)
    key = server.create_key()
    client = AgentMail(api_key=key, environment=env)
    inbox = client.inboxes.create()
    small = b"tiny attachment"
    msg = make_message(inbox.inbox_id, attachments=[("t.txt", "text/plain", small)])
    smtp_send(server, [inbox.inbox_id], msg.as_bytes())
    assert blob_file(server, small).exists()  # 0: every blob is a file

    server.stop()
    del server.extra_env["AGENTMX_BLOB_INLINE_MAX_BYTES"]
    server.start()
    raw, files = raw_and_attachments(AgentMail(api_key=key, environment=env), inbox.inbox_id)
    assert raw.endswith(msg.as_bytes()) and files == {"t.txt": small}
