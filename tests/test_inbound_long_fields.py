"""Part headers that do not fit their columns are stored cleaned, on both backends (found by bench/smtp_mime_fuzz.py).

A Content-Type of 480 characters on a MIME part, or one whose encoded word decodes to NUL, was a 451
on PostgreSQL (VARCHAR(256) and text refuse them) while SQLite stored it: every retry of that
message would have failed the same way.
"""

from __future__ import annotations

import httpx

from conftest import Harness
from mail_support import smtp_send


def test_overlong_content_type_and_content_id_are_stored_cut(harness: Harness) -> None:
    headers = {"Authorization": f"Bearer {harness.api_key}"}
    with httpx.Client(base_url=harness.server.base_url, headers=headers, timeout=30) as http:
        inbox = http.post("/v0/inboxes", json={"username": harness.new_username()}).json()["inbox_id"]
        long_type = "application/" + "x" * 470
        long_id = "\r\n ".join(["<" + "c" * 400] + ["d" * 400] * 3) + ">"  # folded: 1,600+ characters
        raw = (
            f"From: a@example.com\r\nTo: {inbox}\r\nSubject: long fields\r\nMessage-ID: <long-fields@example.com>\r\n"
            'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
            "--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
            f"--b\r\nContent-Type: {long_type}\r\nContent-ID: {long_id}\r\n\r\npayload\r\n--b--\r\n"
        )
        smtp_send(harness.server, [inbox], raw.encode())  # raises unless 250
        item = http.get(f"/v0/inboxes/{inbox}/messages").json()["messages"][0]
        message = http.get(f"/v0/inboxes/{inbox}/messages/{item['message_id']}").json()
    (attachment,) = message["attachments"]
    assert attachment["content_type"] == long_type[:256]
    assert message["text"].strip() == "hello"


def test_content_type_with_an_encoded_nul_is_stored_without_it(harness: Harness) -> None:
    headers = {"Authorization": f"Bearer {harness.api_key}"}
    with httpx.Client(base_url=harness.server.base_url, headers=headers, timeout=30) as http:
        inbox = http.post("/v0/inboxes", json={"username": harness.new_username()}).json()["inbox_id"]
        raw = (
            f"From: a@example.com\r\nTo: {inbox}\r\nSubject: nul type\r\nMessage-ID: <nul-type@example.com>\r\n"
            "Content-Type: text/x=?utf-8?Q?=00?=\r\nContent-Disposition: attachment\r\n\r\nhi\r\n"
        )
        smtp_send(harness.server, [inbox], raw.encode())  # raises unless 250
        item = http.get(f"/v0/inboxes/{inbox}/messages").json()["messages"][0]
        message = http.get(f"/v0/inboxes/{inbox}/messages/{item['message_id']}").json()
    (attachment,) = message["attachments"]
    assert "\x00" not in attachment["content_type"]
