"""NUL characters in ids, query strings and JSON bodies: a 400 in AgentMail's shape on both backends.

Found by bench/api_fuzz.py: PostgreSQL text cannot hold U+0000, so ``GET /v0/inboxes/a%00b`` was a
500 there (and the connection was dropped) while SQLite answered 404.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest


def _assert_nul_refused(resp: httpx.Response) -> None:
    assert resp.status_code == 400, resp.text
    body = resp.json()
    assert body["name"] == "ValidationError"
    assert body["code"] == "validation_error"
    assert "NUL" in body["message"]


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("GET", "/v0/inboxes/a%00b", {}),
        ("GET", "/v0/inboxes/{inbox}/threads/a%00/attachments/x%00", {}),
        ("PATCH", "/v0/inboxes/a%00/webhooks/b%00", {"json": {}}),
        ("GET", "/v0/inboxes/{inbox}/messages/%00", {}),  # a hot route, matched before FastAPI's
        ("GET", "/v0/inboxes", {"params": {"page_token": "a\x00"}}),
        ("GET", "/v0/inboxes/{inbox}/messages", {"params": {"labels": "a\x00"}}),
        ("PATCH", "/v0/inboxes/{inbox}", {"json": {"display_name": "a\x00b"}}),
        ("POST", "/v0/pods", {"json": {"name": "x", "client_id": "c\x00"}}),
        ("POST", "/v0/inboxes/{inbox}/messages/send", {"json": {"to": ["a@b.example"], "text": "\x00"}}),
    ],
)
def test_nul_is_a_400_not_a_500(
    http: httpx.Client, inbox: str, method: str, path: str, kwargs: dict[str, Any]
) -> None:
    _assert_nul_refused(http.request(method, path.format(inbox=inbox), **kwargs))
    assert http.get(f"/v0/inboxes/{inbox}").status_code == 200  # the connection and server carry on


def test_escaped_backslash_u0000_is_ordinary_text(http: httpx.Client, inbox: str) -> None:
    # The six characters \u0000 (an escaped backslash in JSON) are not a NUL.
    resp = http.patch(f"/v0/inboxes/{inbox}", json={"display_name": "literal \\u0000"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["display_name"] == "literal \\u0000"
