"""Caps on the counts one request may name (services/limits.py): labels, custom headers, attachments,
recipients. Each was unbounded but the send's recipients: 5,000 labels on one update, 3,000 headers
or attachments on one send were taken (a row and log event per label, a fetch per url attachment)."""

from __future__ import annotations

from typing import Any

import httpx

from agentmx.services import limits


def _refused(resp: httpx.Response, path: str) -> None:
    assert resp.status_code == 400, resp.text
    body = resp.json()
    assert body["code"] == "validation_error" and body["errors"][0]["path"] == [path], body


def _attachments(count: int) -> list[dict[str, str]]:
    return [{"content": "aGk=", "filename": f"f{i}.txt"} for i in range(count)]


def _labels(count: int) -> list[str]:
    return [f"l{i}" for i in range(count)]


def test_sends_past_the_caps_are_400s_and_send_nothing(http: httpx.Client, inbox: str) -> None:
    to = http.post("/v0/inboxes", json={}).json()["inbox_id"]
    send = f"/v0/inboxes/{inbox}/messages/send"
    base: dict[str, Any] = {"to": [to], "subject": "s", "text": "t"}
    many_headers = {f"X-H{i}": "v" for i in range(limits.MAX_HEADERS + 1)}
    _refused(http.post(send, json={**base, "headers": many_headers}), "headers")
    _refused(
        http.post(send, json={**base, "attachments": _attachments(limits.MAX_ATTACHMENTS + 1)}), "attachments"
    )
    _refused(http.post(send, json={**base, "labels": _labels(limits.MAX_LABELS + 1)}), "labels")
    assert http.get(f"/v0/inboxes/{inbox}/messages").json()["count"] == 0
    at_caps = {
        **base,
        "headers": {f"X-H{i}": "v" for i in range(limits.MAX_HEADERS)},
        "attachments": _attachments(limits.MAX_ATTACHMENTS),
        "labels": _labels(limits.MAX_LABELS),
    }
    sent = http.post(send, json=at_caps)
    assert sent.status_code == 200, sent.text
    message = http.get(f"/v0/inboxes/{inbox}/messages/{sent.json()['message_id']}").json()
    assert len(message["attachments"]) == limits.MAX_ATTACHMENTS


def test_label_updates_past_the_cap_are_400s(http: httpx.Client, inbox: str) -> None:
    to = http.post("/v0/inboxes", json={}).json()["inbox_id"]
    sent = http.post(
        f"/v0/inboxes/{inbox}/messages/send", json={"to": [to], "subject": "s", "text": "t"}
    ).json()
    message = f"/v0/inboxes/{inbox}/messages/{sent['message_id']}"
    thread = f"/v0/inboxes/{inbox}/threads/{sent['thread_id']}"
    for path in (message, thread):
        for field in ("add_labels", "remove_labels"):
            _refused(http.patch(path, json={field: _labels(limits.MAX_LABELS + 1)}), field)
        assert http.patch(path, json={"add_labels": _labels(limits.MAX_LABELS)}).status_code == 200
    assert "l99" in http.get(message).json()["labels"]


def test_drafts_past_the_caps_are_400s(http: httpx.Client, inbox: str) -> None:
    drafts = f"/v0/inboxes/{inbox}/drafts"
    crowd = [f"r{i}@example.com" for i in range(limits.MAX_RECIPIENTS + 1)]
    _refused(http.post(drafts, json={"to": crowd[:30], "bcc": crowd[30:]}), "to")
    _refused(http.post(drafts, json={"attachments": _attachments(limits.MAX_ATTACHMENTS + 1)}), "attachments")
    _refused(http.post(drafts, json={"labels": _labels(limits.MAX_LABELS + 1)}), "labels")
    draft = http.post(drafts, json={"to": crowd[:30], "attachments": _attachments(30), "labels": _labels(60)})
    assert draft.status_code == 200, draft.text
    path = f"{drafts}/{draft.json()['draft_id']}"
    # Each request within the cap, the draft past it in all: it could never be sent.
    _refused(http.patch(path, json={"cc": crowd[30:]}), "to")
    _refused(http.patch(path, json={"add_attachments": _attachments(21)}), "add_attachments")
    _refused(http.patch(path, json={"add_labels": _labels(101)[60:]}), "labels")
    _refused(http.post(f"{path}/send", json={"add_labels": _labels(limits.MAX_LABELS + 1)}), "add_labels")
    kept = http.get(path).json()
    assert len(kept["to"]) == 30 and len(kept["attachments"]) == 30 and not kept.get("cc")


def test_a_message_holds_at_most_the_cap_of_its_own_labels(http: httpx.Client, inbox: str) -> None:
    """Each update within the cap, a message's own labels past it in all: 200 updates of 100 made a
    message of 20,000 labels (a row each, and each in every read of it and of its thread)."""
    to = http.post("/v0/inboxes", json={}).json()["inbox_id"]
    send = f"/v0/inboxes/{inbox}/messages/send"
    first = http.post(send, json={"to": [to], "subject": "s", "text": "t", "labels": _labels(60)}).json()
    second = http.post(send, json={"to": [to], "subject": "s2", "text": "t"}).json()
    message = f"/v0/inboxes/{inbox}/messages/{first['message_id']}"
    more = [f"m{i}" for i in range(limits.MAX_LABELS)]
    _refused(http.patch(message, json={"add_labels": more[:41]}), "add_labels")
    batch = {"message_ids": [second["message_id"], first["message_id"]], "add_labels": more[:41]}
    _refused(http.post(f"/v0/inboxes/{inbox}/messages/batch-update", json=batch), "add_labels")
    thread = f"/v0/inboxes/{inbox}/threads/{first['thread_id']}"
    _refused(http.patch(thread, json={"add_labels": more[:41]}), "add_labels")
    # Refused whole: the other message of the batch did not change either.
    labels = http.get(f"/v0/inboxes/{inbox}/messages/{second['message_id']}").json()["labels"]
    assert not set(labels) & set(more)
    # Up to the cap is fine, and labels removed in the same request make room; the server's own
    # labels (sent, delivered, unread...) do not count.
    assert http.patch(message, json={"add_labels": more[:40]}).status_code == 200
    swapped = http.patch(message, json={"add_labels": more[40:50], "remove_labels": _labels(10)})
    assert swapped.status_code == 200, swapped.text
    own = [name for name in http.get(message).json()["labels"] if name not in ("sent", "delivered")]
    assert len(own) == limits.MAX_LABELS
    _refused(http.patch(message, json={"add_labels": ["one-more"]}), "add_labels")
