"""PostgreSQL stores an inbound message's large values (text, raw bytes, event body) with lz4.

pglz cost the database ~0.2 ms of CPU an inbound message (bench/smtp_ingest.py); lz4 about a fifth.
The message still reads back whole through the API.
"""

from __future__ import annotations

import httpx
import pytest

from conftest import Harness
from mail_support import smtp_send

# Repetitive enough that PostgreSQL compresses each value, as it does most mail over 2 KB.
BODY = "The quick brown fox jumps over the lazy dog, again and again.\r\n" * 80


@pytest.mark.parametrize("harness", ["postgres"], indirect=True)  # a PostgreSQL storage detail
def test_an_inbound_message_is_stored_with_lz4(harness: Harness) -> None:
    headers = {"Authorization": f"Bearer {harness.api_key}"}
    with httpx.Client(base_url=harness.server.base_url, headers=headers, timeout=30) as http:
        inbox = http.post("/v0/inboxes", json={"username": harness.new_username()}).json()["inbox_id"]
        raw = f"From: a@example.com\r\nTo: {inbox}\r\nSubject: lz4\r\nMessage-ID: <lz4-{inbox}>\r\n\r\n{BODY}"
        smtp_send(harness.server, [inbox], raw.encode())  # raises unless 250
        item = http.get(f"/v0/inboxes/{inbox}/messages").json()["messages"][0]
        message = http.get(f"/v0/inboxes/{inbox}/messages/{item['message_id']}").json()
        assert message["text"].replace("\r\n", "\n").strip() == BODY.replace("\r\n", "\n").strip()
        download = http.get(f"/v0/inboxes/{inbox}/messages/{item['message_id']}/raw").json()["download_url"]
        assert httpx.get(download, timeout=30).content.endswith(raw.encode())  # after our Received

    def methods(sql: str) -> int:
        return harness.count_rows(sql, inbox=inbox)

    assert (
        methods(
            "SELECT count(*) FROM messages WHERE inbox_id = :inbox AND pg_column_compression(text) = 'lz4'"
        )
        == 1
    )
    assert (
        methods("SELECT count(*) FROM events WHERE inbox_id = :inbox AND pg_column_compression(body) = 'lz4'")
        == 1
    )
    assert (
        methods(
            "SELECT count(*) FROM inline_blobs JOIN messages ON messages.blob_key = inline_blobs.key"
            " WHERE messages.inbox_id = :inbox AND pg_column_compression(inline_blobs.data) = 'lz4'"
        )
        == 1
    )
