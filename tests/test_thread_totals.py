"""A thread's totals (senders, recipients, counts, size, times, last message) stay what its
messages make them after replies, label changes and deletions."""

from __future__ import annotations

import time
from typing import Any

import httpx

from conftest import Harness
from mail_support import make_message, smtp_send

TOTALS = (
    "senders",
    "recipients",
    "message_count",
    "size",
    "timestamp",
    "received_timestamp",
    "sent_timestamp",
    "last_message_id",
    "preview",
    "subject",
)


def _totals(http: httpx.Client, inbox: str, thread_id: str) -> dict[str, Any]:
    resp = http.get(f"/v0/inboxes/{inbox}/threads/{thread_id}")
    assert resp.status_code == 200, resp.text
    return {key: resp.json().get(key) for key in TOTALS}


def test_deleting_a_reply_gives_back_the_totals_before_it(harness: Harness, http: httpx.Client) -> None:
    inbox, to, hidden = (
        http.post("/v0/inboxes", json={"username": harness.new_username()}).json()["inbox_id"]
        for _ in range(3)
    )
    sent = http.post(
        f"/v0/inboxes/{inbox}/messages/send",
        json={"to": [to], "bcc": [hidden], "subject": "Totals", "text": "first"},
    ).json()
    before = _totals(http, inbox, sent["thread_id"])
    assert before["recipients"] == [to, hidden]  # the sender's copy knows its Bcc

    reply = make_message(inbox, subject="Re: Totals", text="second", in_reply_to=sent["message_id"])
    smtp_send(harness.server, [inbox], reply.as_bytes())
    deadline = time.monotonic() + 10
    while _totals(http, inbox, sent["thread_id"])["message_count"] != 2:
        assert time.monotonic() < deadline, "the reply did not join the thread"
        time.sleep(0.05)
    labelled = http.patch(f"/v0/inboxes/{inbox}/messages/{reply['Message-ID']}", json={"add_labels": ["x"]})
    assert labelled.status_code == 200, labelled.text

    assert http.delete(f"/v0/inboxes/{inbox}/messages/{reply['Message-ID']}").status_code == 204
    assert _totals(http, inbox, sent["thread_id"]) == before


def test_deleting_the_first_message_gives_the_thread_the_subject_of_the_one_now_first(
    harness: Harness, http: httpx.Client
) -> None:
    inbox = http.post("/v0/inboxes", json={"username": harness.new_username()}).json()["inbox_id"]
    first = make_message(inbox, subject="Invoice", text="first")
    smtp_send(harness.server, [inbox], first.as_bytes())
    reply = make_message(inbox, subject="Changed topic", text="second", in_reply_to=first["Message-ID"])
    smtp_send(harness.server, [inbox], reply.as_bytes())
    thread_id = http.get(f"/v0/inboxes/{inbox}/messages/{first['Message-ID']}").json()["thread_id"]
    assert _totals(http, inbox, thread_id)["subject"] == "Invoice"

    assert http.delete(f"/v0/inboxes/{inbox}/messages/{first['Message-ID']}").status_code == 204
    assert _totals(http, inbox, thread_id)["subject"] == "Changed topic"
    listed = http.get(f"/v0/inboxes/{inbox}/threads").json()["threads"]
    assert [t["subject"] for t in listed if t["thread_id"] == thread_id] == ["Changed topic"]
