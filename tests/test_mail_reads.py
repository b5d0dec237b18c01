"""GET message and GET thread (services/mail_reads.py) agree with the list routes
(services/mail_lists.py) on the same rows: labels, attachments, thread aggregates, paging, hidden labels."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from conftest import Harness
from mail_support import make_message, smtp_send

PDF = b"%PDF-1.4\n" + b"\x00binary\xff" * 40
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(64))


def _http(harness: Harness, api_key: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {api_key or harness.api_key}"}
    return httpx.Client(base_url=harness.server.base_url, headers=headers, timeout=30)


def _path(message_id: str) -> str:
    return quote(message_id, safe="@")


def _thread_of_three(harness: Harness, http: httpx.Client) -> tuple[str, list[dict[str, Any]]]:
    """An inbox with a three-message thread: attachments on two, cc, html, replies, custom labels."""
    inbox = http.post("/v0/inboxes", json={"username": harness.new_username()}).json()["inbox_id"]
    first = make_message(
        inbox, subject="Quarterly", html="<p>Hi</p>", attachments=[("q1.pdf", "application/pdf", PDF)]
    )
    second = make_message(
        inbox, subject="Re: Quarterly", in_reply_to=first["Message-ID"], cc="boss@example.com"
    )
    third = make_message(
        inbox, subject="Re: Quarterly", in_reply_to=second["Message-ID"], html='<img src="cid:x">',
        inline_image=PNG, attachments=[("q2.pdf", "application/pdf", PDF)],
    )  # fmt: skip
    for msg in (first, second, third):
        assert smtp_send(harness.server, [inbox], msg.as_bytes()) == {}
    listed = http.get(f"/v0/inboxes/{inbox}/messages").json()["messages"]
    assert len(listed) == 3 and len({m["thread_id"] for m in listed}) == 1
    http.patch(
        f"/v0/inboxes/{inbox}/messages/{_path(first['Message-ID'])}", json={"add_labels": ["Zeta", "b-c"]}
    )
    return inbox, http.get(f"/v0/inboxes/{inbox}/messages").json()["messages"]


def test_get_message_and_thread_match_the_list_routes(harness: Harness) -> None:
    with _http(harness) as http:
        inbox, items = _thread_of_three(harness, http)
        thread_id = items[0]["thread_id"]
        full = {}
        for item in items:
            got = http.get(f"/v0/inboxes/{inbox}/messages/{_path(item['message_id'])}").json()
            # A MessageItem is the Message without bodies and headers.
            assert {k: v for k, v in got.items() if k in item} == item
            assert got["headers"]["Subject"] and got["text"]
            full[item["message_id"]] = got
        assert any(m["labels"] == ["b-c", "received", "unread", "zeta"] for m in full.values())
        assert sum(len(m.get("attachments", [])) for m in full.values()) == 3

        listed = http.get("/v0/threads").json()["threads"]
        thread_item = next(t for t in listed if t["thread_id"] == thread_id)
        oldest_first = sorted(full.values(), key=lambda m: (m["timestamp"], m["message_id"]))
        for path in (f"/v0/threads/{thread_id}", f"/v0/inboxes/{inbox}/threads/{thread_id}"):
            thread = http.get(path).json()
            assert {k: v for k, v in thread.items() if k in thread_item} == thread_item
            assert thread["count"] == 3 and thread["messages"] == oldest_first

        # One message a page: each page still carries the whole thread's labels and attachments.
        pages, token = [], None
        while True:
            params = {"limit": 1, **({"page_token": token} if token else {})}
            page = http.get(f"/v0/threads/{thread_id}", params=params).json()
            assert {k: v for k, v in page.items() if k in thread_item} == thread_item
            pages += page["messages"]
            token = page.get("next_page_token")
            if not token:
                break
        assert sorted(pages, key=lambda m: (m["timestamp"], m["message_id"])) == oldest_first


def test_hidden_labels_and_scope_on_the_hot_reads(harness: Harness) -> None:
    with _http(harness) as http:
        inbox, items = _thread_of_three(harness, http)
        other = http.post("/v0/inboxes", json={"username": harness.new_username()}).json()["inbox_id"]
        message_path = f"/v0/inboxes/{inbox}/messages/{_path(items[0]['message_id'])}"
        thread_path = f"/v0/threads/{items[0]['thread_id']}"
        http.patch(message_path, json={"add_labels": ["trash"]})
        reader = http.post("/v0/api-keys", json={"name": "r", "permissions": {"message_read": True}}).json()
        trash_reader = http.post(
            "/v0/api-keys",
            json={"name": "t", "permissions": {"message_read": True, "label_trash_read": True}},
        ).json()
        other_key = http.post(f"/v0/inboxes/{other}/api-keys", json={"name": "o"}).json()
    with _http(harness, reader["api_key"]) as limited:
        for path in (message_path, thread_path):
            resp = limited.get(path)
            assert resp.status_code == 404 and resp.json()["message"] in (
                "Message not found",
                "Thread not found",
            )
    with _http(harness, trash_reader["api_key"]) as allowed:
        assert allowed.get(message_path).status_code == 200 and allowed.get(thread_path).status_code == 200
    with _http(harness, other_key["api_key"]) as foreign:
        assert foreign.get(message_path).json()["message"] == "Inbox not found"
        assert foreign.get(thread_path).json()["message"] == "Thread not found"
