"""Message and thread lists (SQLAlchemy Core, services/mail_lists.py) against the list rules worked
out here from GET of every message and thread: label filters, hidden labels and include_*, before
and after, text filters, both orders, page sizes down to one (every page token), and the inbox, pod,
organization and key scopes."""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from conftest import Harness
from mail_support import make_message, smtp_send

PDF = b"%PDF-1.4\n" + b"\x00binary\xff" * 40
HIDDEN = {"spam", "blocked", "unauthenticated", "trash"}
FULL_ONLY = {"text", "html", "extracted_text", "extracted_html", "headers", "reply_to"}
THREAD_ONLY = {"messages", "count", "limit", "next_page_token"}
Doc = dict[str, Any]


def _http(harness: Harness, api_key: str) -> httpx.Client:
    return httpx.Client(
        base_url=harness.server.base_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=30
    )


def _walk(http: httpx.Client, path: str, key: str, limit: int, **params: Any) -> list[Doc]:
    """Every page of a list, following next_page_token; checks each page's count and limit."""
    items: list[Doc] = []
    token = None
    while True:
        query = {**params, "limit": limit, **({"page_token": token} if token else {})}
        resp = http.get(path, params=query)
        assert resp.status_code == 200, resp.text
        page = resp.json()
        assert page["count"] == len(page[key]) <= limit and page["limit"] == limit
        items += page[key]
        token = page.get("next_page_token")
        if not token:
            return items
        assert page["count"] == limit


class Mailbox:
    """A pod with two inboxes and an inbox outside it, mail in all three, a label unique to the run."""

    def __init__(self, harness: Harness, http: httpx.Client) -> None:
        self.server = harness.server
        self.tag = "run-" + secrets.token_hex(4)
        self.pod = http.post("/v0/pods", json={"name": "lists-" + harness.new_username()}).json()["pod_id"]
        self.a, self.b = (
            http.post(f"/v0/pods/{self.pod}/inboxes", json={"username": harness.new_username()}).json()[
                "inbox_id"
            ]
            for _ in range(2)
        )
        self.c = http.post("/v0/inboxes", json={"username": harness.new_username()}).json()["inbox_id"]
        self.ids: dict[str, list[str]] = {self.a: [], self.b: [], self.c: []}
        senders = ["Carol <carol@example.com>", "Dave <dave@example.org>", "Émile <emile@example.net>"]
        previous: dict[int, str] = {}
        for i in range(14):  # inbox a: five threads of one to four messages
            thread = i % 5
            msg = make_message(
                self.a,
                subject=("Re: " if thread in previous else "") + f"Topic {thread}",
                sender=senders[i % 3],
                in_reply_to=previous.get(thread),
                cc="watcher@example.com" if i % 4 == 1 else None,
                attachments=[(f"f{i}.pdf", "application/pdf", PDF)] if i % 6 == 2 else None,
            )
            previous[thread] = msg["Message-ID"]
            self._send(self.a, msg)
        for inbox, count in ((self.b, 3), (self.c, 2)):
            for i in range(count):
                self._send(inbox, make_message(inbox, subject=f"Other {i}", sender=senders[i]))
        a = self.ids[self.a]
        for inbox, ids in self.ids.items():
            for n, mid in enumerate(ids):
                labels = [self.tag] + (["alpha"] if n % 2 == 0 else []) + (["beta"] if n % 3 == 0 else [])
                self._label(http, inbox, mid, labels)
        self._label(http, self.a, a[3], ["trash"])
        self._label(http, self.a, a[8], ["spam", "trash"])
        self._label(http, self.b, self.ids[self.b][1], ["spam"])
        self.messages = {
            mid: http.get(f"/v0/inboxes/{inbox}/messages/{quote(mid, safe='@')}").json()
            for inbox, ids in self.ids.items()
            for mid in ids
        }
        thread_ids = {(m["inbox_id"], m["thread_id"]) for m in self.messages.values()}
        self.threads = {
            tid: http.get(f"/v0/inboxes/{inbox}/threads/{tid}").json() for inbox, tid in thread_ids
        }
        stamps = [m["timestamp"] for m in self.messages.values()]
        assert len(set(stamps)) == len(stamps)  # the expected order needs no tie-break on internal ids

    def _send(self, inbox: str, msg: Any) -> None:
        assert smtp_send(self.server, [inbox], msg.as_bytes()) == {}
        self.ids[inbox].append(msg["Message-ID"])

    def _label(self, http: httpx.Client, inbox: str, mid: str, labels: list[str]) -> None:
        resp = http.patch(f"/v0/inboxes/{inbox}/messages/{quote(mid, safe='@')}", json={"add_labels": labels})
        assert resp.status_code == 200, resp.text


@pytest.fixture(scope="module")
def mailbox(harness: Harness) -> Mailbox:
    with _http(harness, harness.api_key) as http:
        return Mailbox(harness, http)


def _visible(labels: set[str], include: set[str]) -> bool:
    return not labels & (HIDDEN - include)


def _has(text: str, value: str) -> bool:
    return value.lower() in text.lower()


def _expected_messages(docs: list[Doc], ascending: bool, **f: Any) -> list[Doc]:
    out = []
    for m in docs:
        labels = set(m["labels"])
        recipients = " ".join([*m.get("to", []), *m.get("cc", []), *m.get("bcc", [])])
        if (
            _visible(labels, f.get("include", set()))
            and set(f.get("labels", [])) <= labels
            and ("before" not in f or m["timestamp"] < f["before"])
            and ("after" not in f or m["timestamp"] >= f["after"])
            and all(_has(m["from"], v) for v in f.get("from", []))
            and all(_has(recipients, v) for v in f.get("to", []))
            and all(_has(m.get("subject", ""), v) for v in f.get("subject", []))
        ):
            out.append({k: v for k, v in m.items() if k not in FULL_ONLY})
    return sorted(out, key=lambda m: m["timestamp"], reverse=not ascending)


def _expected_threads(mailbox: Mailbox, inboxes: set[str], ascending: bool, **f: Any) -> list[Doc]:
    out = []
    for thread in mailbox.threads.values():
        labels = set(thread["labels"])
        if (
            thread["inbox_id"] in inboxes
            and _visible(labels, f.get("include", set()))
            and set(f.get("labels", [])) <= labels
            and ("before" not in f or thread["timestamp"] < f["before"])
            and ("after" not in f or thread["timestamp"] >= f["after"])
            and all(any(_has(s, v) for s in thread["senders"]) for v in f.get("senders", []))
            and all(_has(thread.get("subject", ""), v) for v in f.get("subject", []))
        ):
            out.append({k: v for k, v in thread.items() if k not in THREAD_ONLY})
    return sorted(out, key=lambda t: t["timestamp"], reverse=not ascending)


def _query(f: dict[str, Any]) -> dict[str, Any]:
    """Filters as query parameters: lists repeated, include_X flags."""
    params: dict[str, Any] = {k: v for k, v in f.items() if k != "include"}
    params.update({f"include_{name}": "true" for name in f.get("include", set())})
    return params


def _message_cases(mailbox: Mailbox) -> list[dict[str, Any]]:
    stamps = sorted(m["timestamp"] for m in mailbox.messages.values() if m["inbox_id"] == mailbox.a)
    return [
        {},
        {"include": {"trash"}},
        {"include": {"trash", "spam"}},
        {"include": {"spam"}},
        {"labels": ["alpha"]},
        {"labels": ["ALPHA", "beta"], "include": {"trash", "spam"}},
        {"labels": ["nothing-has-this"]},
        {"before": stamps[9]},
        {"after": stamps[4]},
        {"after": stamps[2], "before": stamps[11], "include": {"trash"}},
        {"from": ["CAROL"]},
        {"from": ["EMILE@"]},
        {"to": ["watcher@"]},
        {"subject": ["re:", "topic 1"]},
    ]


@pytest.mark.parametrize("ascending", [False, True])
def test_message_lists_follow_the_rules_on_every_page(
    harness: Harness, mailbox: Mailbox, ascending: bool
) -> None:
    docs = [m for m in mailbox.messages.values() if m["inbox_id"] == mailbox.a]
    path = f"/v0/inboxes/{mailbox.a}/messages"
    with _http(harness, harness.api_key) as http:
        for f in _message_cases(mailbox):
            expected = _expected_messages(
                docs, ascending, **{**f, "labels": [x.lower() for x in f.get("labels", [])]}
            )
            for limit in (1, 4, 100):
                got = _walk(http, path, "messages", limit, ascending=str(ascending).lower(), **_query(f))
                assert got == expected, (f, limit)


@pytest.mark.parametrize("ascending", [False, True])
def test_thread_lists_follow_the_rules_in_every_scope(
    harness: Harness, mailbox: Mailbox, ascending: bool
) -> None:
    a_stamps = sorted(t["timestamp"] for t in mailbox.threads.values() if t["inbox_id"] == mailbox.a)
    cases: list[dict[str, Any]] = [
        {},
        {"include": {"trash"}},
        {"include": {"trash", "spam"}},
        {"labels": ["beta"]},
        {"labels": ["alpha", "beta"], "include": {"spam"}},
        {"before": a_stamps[3]},
        {"after": a_stamps[1], "include": {"trash", "spam"}},
        {"senders": ["dave@"]},
        {"subject": ["topic 2"]},
    ]
    everything = {mailbox.a, mailbox.b, mailbox.c}
    scopes: list[tuple[str, set[str], Callable[[dict[str, Any]], dict[str, Any]]]] = [
        (f"/v0/inboxes/{mailbox.a}/threads", {mailbox.a}, lambda f: f),
        (f"/v0/pods/{mailbox.pod}/threads", {mailbox.a, mailbox.b}, lambda f: f),
        # Organization-wide: the run's label keeps other tests' threads out.
        ("/v0/threads", everything, lambda f: {**f, "labels": [mailbox.tag, *f.get("labels", [])]}),
    ]
    with _http(harness, harness.api_key) as http:
        for path, inboxes, scoped in scopes:
            for f in cases:
                f = scoped(f)
                expected = _expected_threads(mailbox, inboxes, ascending, **f)
                for limit in (1, 3, 100):
                    got = _walk(http, path, "threads", limit, ascending=str(ascending).lower(), **_query(f))
                    assert got == expected, (path, f, limit)


def test_key_scopes_narrow_the_lists(harness: Harness, mailbox: Mailbox) -> None:
    with _http(harness, harness.api_key) as admin:
        inbox_key = admin.post(f"/v0/inboxes/{mailbox.a}/api-keys", json={"name": "lists"}).json()["api_key"]
        pod_key = admin.post(f"/v0/pods/{mailbox.pod}/api-keys", json={"name": "lists"}).json()["api_key"]
    tagged = {"labels": [mailbox.tag]}
    with _http(harness, inbox_key) as http:
        assert _walk(http, "/v0/threads", "threads", 2, **tagged) == _expected_threads(
            mailbox, {mailbox.a}, False, **tagged
        )
        for path in (f"/v0/inboxes/{mailbox.b}/messages", f"/v0/inboxes/{mailbox.b}/threads"):
            assert http.get(path).status_code == 404
            assert http.get(path, params={"page_token": "garbage"}).status_code == 404
        # Pod routes are refused to an inbox key, though its own inbox's threads are in the pod.
        assert http.get(f"/v0/pods/{mailbox.pod}/threads").status_code == 403
        assert (
            http.get(f"/v0/inboxes/{mailbox.a}/threads", params={"page_token": "garbage"}).status_code == 400
        )
    with _http(harness, pod_key) as http:
        assert _walk(http, "/v0/threads", "threads", 2, **tagged) == _expected_threads(
            mailbox, {mailbox.a, mailbox.b}, False, **tagged
        )
        assert _walk(http, f"/v0/inboxes/{mailbox.b}/messages", "messages", 2) == _expected_messages(
            [m for m in mailbox.messages.values() if m["inbox_id"] == mailbox.b], False
        )
        assert http.get(f"/v0/inboxes/{mailbox.c}/messages").json()["name"] == "NotFoundError"
        assert http.get(f"/v0/inboxes/{mailbox.c}/threads").status_code == 404
        assert http.get("/v0/pods/pod_missing/threads").status_code == 404
        # A visible inbox with nothing in it is an empty page, not a 404.
        empty = http.post(f"/v0/pods/{mailbox.pod}/inboxes", json={"username": harness.new_username()}).json()
        for kind in ("messages", "threads"):
            page = http.get(f"/v0/inboxes/{empty['inbox_id']}/{kind}").json()
            assert page["count"] == 0 and page[kind] == []


def test_page_tokens_keep_their_format_and_are_bound_to_their_list(
    harness: Harness, mailbox: Mailbox
) -> None:
    with _http(harness, harness.api_key) as http:
        messages = http.get(f"/v0/inboxes/{mailbox.a}/messages", params={"limit": 2}).json()
        threads = http.get(f"/v0/pods/{mailbox.pod}/threads", params={"limit": 2}).json()
        for token, kind in (
            (messages["next_page_token"], f"messages:{mailbox.a}"),
            (threads["next_page_token"], f"threads::{mailbox.pod}"),
        ):
            data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
            assert data["k"] == kind and len(data["v"]) == 2
            assert datetime.fromisoformat(data["v"][0]) and data["v"][1]
        # A token from another list, or a broken one, is a 400 with the same body.
        other = http.get(
            f"/v0/inboxes/{mailbox.b}/messages", params={"page_token": messages["next_page_token"]}
        )
        broken = http.get("/v0/threads", params={"page_token": "garbage"})
        for resp in (other, broken):
            assert resp.status_code == 400
            assert resp.json()["message"] == "Invalid page_token. Restart the listing without a page_token."
        # Unknown scopes are 404s before the token is read.
        for path in ("/v0/inboxes/nobody@nowhere.example/messages", "/v0/pods/pod_missing/threads"):
            resp = http.get(path, params={"page_token": "garbage"})
            assert resp.status_code == 404, path


def test_times_with_no_utc_equivalent_are_400s(harness: Harness, mailbox: Mailbox) -> None:
    """Year 9999 at -05:00 and year 1 at +05:00 have no UTC datetime: a 400 naming the parameter
    (before and after) or the token (a forged one), not a 500 where the statement binds them."""
    edges = ("9999-12-31T23:00:00-05:00", "0001-01-01T00:30:00+05:00")
    lists = (
        (f"/v0/inboxes/{mailbox.a}/messages", f"messages:{mailbox.a}"),
        (f"/v0/pods/{mailbox.pod}/threads", f"threads::{mailbox.pod}"),
        ("/v0/threads", "threads::"),
    )
    with _http(harness, harness.api_key) as http:
        for path, kind in lists:
            for edge in edges:
                forged = json.dumps({"k": kind, "v": [edge, "msg_x"]}).encode()
                for param, value in (
                    ("before", edge),
                    ("after", edge),
                    ("page_token", base64.urlsafe_b64encode(forged).decode().rstrip("=")),
                ):
                    resp = http.get(path, params={param: value})
                    assert resp.status_code == 400, (path, param, value, resp.text)
                    assert resp.json()["errors"][0]["path"] == [param]
        # The times next to them that do exist in UTC are ordinary filters.
        resp = http.get(f"/v0/inboxes/{mailbox.a}/messages", params={"before": "9999-12-31T23:00:00+05:00"})
        assert resp.status_code == 200 and resp.json()["count"] > 0


def test_list_routes_answer_head_as_get_without_a_body(harness: Harness, mailbox: Mailbox) -> None:
    paths = [f"/v0/inboxes/{mailbox.a}/messages", "/v0/threads", f"/v0/pods/{mailbox.pod}/threads"]
    with _http(harness, harness.api_key) as http:
        for path in [*paths, f"/v0/inboxes/{mailbox.a}/threads"]:
            head, get = http.head(path), http.get(path)
            assert head.status_code == get.status_code == 200, path
            assert head.content == b"" and head.headers["content-length"] == str(len(get.content)), path


# The wire's field order (as agentmx has written it), which GET and the lists share.
MESSAGE_ORDER = [
    "inbox_id",
    "thread_id",
    "message_id",
    "labels",
    "timestamp",
    "from",
    "to",
    "cc",
    "bcc",
    "subject",
    "preview",
    "attachments",
    "in_reply_to",
    "references",
    "size",
    "updated_at",
    "created_at",
]
THREAD_ORDER = [
    "inbox_id",
    "thread_id",
    "labels",
    "timestamp",
    "received_timestamp",
    "sent_timestamp",
    "senders",
    "recipients",
    "subject",
    "preview",
    "attachments",
    "last_message_id",
    "message_count",
    "size",
    "updated_at",
    "created_at",
]


def _page_bytes(key: str, items: list[Doc], limit: int, token: str | None) -> bytes:
    """A list page as the server writes it (wire.page, compact JSON, UTF-8 as it is)."""
    page: Doc = {"count": len(items), "limit": limit, **({"next_page_token": token} if token else {})}
    page[key] = items
    return json.dumps(page, ensure_ascii=False, separators=(",", ":")).encode()


def _utc(value: str) -> datetime:
    found = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return found if found.tzinfo else found.replace(tzinfo=UTC)


def _walk_bytes(
    http: httpx.Client, path: str, key: str, limit: int, expected: list[Doc], **params: Any
) -> None:
    """Every page of a list is, byte for byte, the page of ``expected`` (documents as GET gives them,
    the list's fields in GET's order), and its token points after its last item."""
    token = None
    for start in range(0, len(expected) + 1, limit):
        query = {**params, "limit": limit, **({"page_token": token} if token else {})}
        resp = http.get(path, params=query)
        assert resp.status_code == 200, resp.text
        items = expected[start : start + limit]
        order = MESSAGE_ORDER if key == "messages" else THREAD_ORDER
        assert all(list(item) == [k for k in order if k in item] for item in items)
        token = resp.json().get("next_page_token")
        assert resp.content == _page_bytes(key, items, limit, token), (path, params, limit, start)
        if not token:
            assert start + limit >= len(expected)
            return
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        assert data["k"].startswith(key) and _utc(data["v"][0]) == _utc(items[-1]["timestamp"])
    raise AssertionError(f"{path}: more pages than {len(expected)} items make")


def _without(doc: Doc, keys: set[str]) -> Doc:
    return {k: v for k, v in doc.items() if k not in keys}


def test_list_pages_are_the_get_documents_byte_for_byte(harness: Harness, mailbox: Mailbox) -> None:
    """Lists write their items as GET writes a message or thread (its list fields, in its order):
    labels, hidden labels and include_*, attachments, cc and references, page tokens, in the inbox,
    pod and organization scopes and under a pod key. Also for a row as an older build stored its
    JSON lists (json.dumps: spaces, \\u escapes), which SQLite's list now joins as stored text."""
    with _http(harness, harness.api_key) as http:
        old = http.post("/v0/inboxes", json={"username": harness.new_username()}).json()["inbox_id"]
        for i in range(3):
            msg = make_message(
                old, subject=f"Älter {i}", sender="Zoë <zoe@example.net>", cc="Émile <e@x.example>"
            )
            assert smtp_send(harness.server, [old], msg.as_bytes()) == {}
            mid = msg["Message-ID"]
            resp = http.patch(
                f"/v0/inboxes/{old}/messages/{quote(mid, safe='@')}", json={"add_labels": [mailbox.tag]}
            )
            assert resp.status_code == 200, resp.text
        # The JSON lists as json.dumps wrote them before orjson: spaces, and "\u00c9" for "É".
        for table, column in (("messages", "to"), ("messages", "cc"), ("threads", "senders")):
            for row_id, stored in harness.rows(
                f'SELECT id, CAST("{column}" AS TEXT) FROM {table} WHERE inbox_id = :i', i=old
            ):
                older = json.dumps(json.loads(stored))
                harness.execute(f'UPDATE {table} SET "{column}" = :v WHERE id = :id', v=older, id=row_id)
        stored = harness.rows("SELECT CAST(cc AS TEXT) FROM messages WHERE inbox_id = :i", i=old)
        if harness.backend == "sqlite":  # PostgreSQL's jsonb keeps no text
            assert all(r[0] == '["\\u00c9mile <e@x.example>"]' for r in stored), stored
        old_messages = [
            http.get(f"/v0/inboxes/{old}/messages/{quote(m['message_id'], safe='@')}").json()
            for m in http.get(f"/v0/inboxes/{old}/messages").json()["messages"]
        ]
        old_threads = {
            t["thread_id"]: http.get(f"/v0/inboxes/{old}/threads/{t['thread_id']}").json()
            for t in http.get(f"/v0/inboxes/{old}/threads").json()["threads"]
        }
        assert any(m.get("cc") == ["Émile <e@x.example>"] for m in old_messages)

        def messages(inbox: str, docs: list[Doc], include: set[str]) -> list[Doc]:
            listed = [
                _without(m, FULL_ONLY)
                for m in docs
                if m["inbox_id"] == inbox and _visible(set(m["labels"]), include)
            ]
            return sorted(listed, key=lambda m: m["timestamp"], reverse=True)

        def threads(inboxes: set[str], docs: list[Doc], include: set[str]) -> list[Doc]:
            listed = [
                _without(t, THREAD_ONLY)
                for t in docs
                if t["inbox_id"] in inboxes and _visible(set(t["labels"]), include)
            ]
            return sorted(listed, key=lambda t: t["timestamp"], reverse=True)

        all_messages = [*mailbox.messages.values(), *old_messages]
        all_threads = [*mailbox.threads.values(), *old_threads.values()]
        everything = {mailbox.a, mailbox.b, mailbox.c, old}
        for include in (set(), {"trash"}, {"trash", "spam"}):
            flags = {f"include_{name}": "true" for name in include}
            for inbox in (mailbox.a, mailbox.b, old):
                expected = messages(inbox, all_messages, include)
                for limit in (3, 100):
                    _walk_bytes(http, f"/v0/inboxes/{inbox}/messages", "messages", limit, expected, **flags)
            for path, inboxes, extra in (
                (f"/v0/inboxes/{mailbox.a}/threads", {mailbox.a}, {}),
                (f"/v0/inboxes/{old}/threads", {old}, {}),
                (f"/v0/pods/{mailbox.pod}/threads", {mailbox.a, mailbox.b}, {}),
                ("/v0/threads", everything, {"labels": mailbox.tag}),
            ):
                expected = threads(inboxes, all_threads, include)
                for limit in (2, 100):
                    _walk_bytes(http, path, "threads", limit, expected, **flags, **extra)
        pod_key = http.post(f"/v0/pods/{mailbox.pod}/api-keys", json={"name": "bytes"}).json()["api_key"]
    with _http(harness, pod_key) as http:
        expected = threads({mailbox.a, mailbox.b}, all_threads, set())
        _walk_bytes(http, "/v0/threads", "threads", 4, expected, labels=mailbox.tag)
