"""Hypothesis strategy for requests against every operation in the served OpenAPI document.

Shared by tests/test_robustness_api.py (80 derandomised examples per backend, part of `make
test`) and bench/api_fuzz.py (random examples for a bounded wall time). Path parameters mix
real ids (so requests reach deep code) with hostile strings; query strings and JSON bodies are
drawn from the API's own field names with values of every JSON type. Needs the dev extra
(hypothesis); nothing in the served application imports it.
"""

from __future__ import annotations

import json
import re
import secrets
import smtplib
import string
from email.message import EmailMessage
from email.policy import SMTP
from typing import Any
from urllib.parse import quote

import httpx
from hypothesis import strategies as st

from agentmx.testing.server import ServerProcess

FIELDS = [
    "username", "domain", "display_name", "client_id", "status", "metadata", "name", "to", "cc", "bcc",
    "reply_to", "subject", "text", "html", "labels", "add_labels", "remove_labels", "attachments",
    "headers", "remove_headers", "send_at", "url", "event_types", "pod_ids", "inbox_ids", "add_pod_ids",
    "remove_pod_ids", "add_inbox_ids", "remove_inbox_ids", "enabled", "permissions", "entry", "reason",
    "message_ids", "feedback_enabled", "in_reply_to", "references", "content", "filename", "content_type",
    "content_disposition", "content_id", "expires_at", "inbox_id", "pod_id",
]  # fmt: skip
QUERY = [
    "limit", "page_token", "ascending", "labels", "before", "after", "q", "include_spam", "include_blocked",
    "include_trash", "include_unauthenticated", "senders", "recipients", "subject", "from", "to",
    "event_types", "period", "start", "end", "start_timestamp", "end_timestamp", "usage_types",
    "rate_types", "limit_per_bucket", "descending", "api_key",
]  # fmt: skip

HOSTILE = st.sampled_from(
    ["", " ", "..", "%00", "%2F", "null", "0", "-1", "9" * 40, "a" * 1200, "<>", "<a@b>", "é@ü.example",
     "x'; DROP TABLE messages;--", "\u202e", "%", "%zz", "[]", "{}", "true"]
)  # fmt: skip
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    HOSTILE,
    st.sampled_from(["2024-01-02T03:04:05Z", "2999-12-31T23:59:59+14:00", "message.received", "inbound"]),
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), inner, max_size=4),
    ),
    max_leaves=12,
)
QUERY_VALUES = st.one_of(
    st.text(string.printable, max_size=30),
    HOSTILE,
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.lists(st.text(max_size=8), max_size=3).map(json.dumps),
    st.sampled_from(["true", "false", "[", '["a", 1, null]', "2024-01-02T03:04:05Z", "2024-13-45"]),
)

# What a fuzzed request is: (method, path, query, JSON body or None).
Request = tuple[str, str, dict[str, str], bytes | None]


class Target:
    """A served agentmx seen through one API key, its operations and a few real resource ids."""

    def __init__(
        self, base_url: str, key: str, real: dict[str, list[str]], ops: list[tuple[str, str]]
    ) -> None:
        self.http = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        self.real = real
        self.ops = ops

    @classmethod
    def seeded(cls, server: ServerProcess) -> Target:
        """Read the served /openapi.json, make a key and seed one inbox with one received message."""
        spec = httpx.get(server.base_url + "/openapi.json", timeout=30).json()
        target = cls(server.base_url, server.create_key(), {}, operations(spec))
        target.real = seed(target.http, server)
        return target

    def send(self, request: Request) -> httpx.Response:
        method, path, query, body = request
        headers = {"content-type": "application/json"} if body is not None else {}
        return self.http.request(method, path, params=query, content=body, headers=headers)

    def close(self) -> None:
        self.http.close()


def operations(spec: dict[str, Any]) -> list[tuple[str, str]]:
    return sorted(
        (method.upper(), path)
        for path, ops in spec["paths"].items()
        for method in ops
        if method in {"get", "post", "patch", "put", "delete"}
    )


def seed(client: httpx.Client, server: ServerProcess) -> dict[str, list[str]]:
    """A few real resources, so generated requests reach past the 404s."""
    inbox = client.post("/v0/inboxes", json={"username": "fuzz"}).json()
    msg = EmailMessage(policy=SMTP)
    msg["From"] = "Sender Person <sender@example.com>"
    msg["To"] = inbox["inbox_id"]
    msg["Subject"] = "seed"
    msg["Message-ID"] = f"<{secrets.token_hex(8)}@example.com>"
    msg.set_content("Hello there")
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as smtp:
        smtp.sendmail("sender@example.com", [inbox["inbox_id"]], msg.as_bytes())
    listing = client.get(f"/v0/inboxes/{inbox['inbox_id']}/messages").json()
    message = listing["messages"][0]
    return {
        "inbox_id": [inbox["inbox_id"]],
        "pod_id": [inbox["pod_id"]],
        "message_id": [message["message_id"]],
        "rest": [message["message_id"], message["message_id"] + "/raw"],
        "thread_id": [message["thread_id"]],
        "direction": ["send", "receive", "reply"],
        "list_type": ["allow", "block"],
    }


@st.composite
def requests(draw: st.DrawFn, target: Target) -> Request:
    method, template = draw(st.sampled_from(target.ops))

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        real = [] if method == "DELETE" else target.real.get(name, [])
        value = draw(
            st.sampled_from(real) | HOSTILE | st.text(max_size=20) if real else HOSTILE | st.text(max_size=20)
        )
        return quote(value, safe="@+/") if name == "rest" else quote(value, safe="@+")

    path = re.sub(r"\{([^}]+)\}", fill, template)
    query = draw(st.dictionaries(st.sampled_from(QUERY), QUERY_VALUES, max_size=4))
    body: bytes | None = None
    if method in {"POST", "PATCH", "PUT"}:
        body = draw(
            st.one_of(
                st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES, max_size=6).map(
                    lambda d: json.dumps(d).encode()
                ),
                JSON_VALUES.map(lambda v: json.dumps(v).encode()),
                st.sampled_from([b"", b"{", b"\xff\xfe", b"[]", b"null", b'{"a": NaN}']),
            )
        )
    return method, path, query, body


def describe(request: Request, resp: httpx.Response) -> str:
    method, path, query, body = request
    return f"{method} {path} {query} {body!r} -> {resp.status_code} {resp.text[:500]}"
