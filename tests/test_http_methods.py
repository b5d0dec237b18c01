"""HEAD wherever GET is, and 405 answers that name the allowed methods (RFC 9110 9.3.2, 15.5.6)."""

from __future__ import annotations

import httpx

from conftest import Harness


def test_head_answers_as_get_without_a_body(harness: Harness, http: httpx.Client, inbox: str) -> None:
    """Every route answered HEAD with 405 (FastAPI adds no HEAD to a GET route)."""
    paths = ["/health", "/v0/inboxes", f"/v0/inboxes/{inbox}", f"/v0/inboxes/{inbox}/messages", "/v0/pods"]
    for path in paths:
        head, got = http.head(path), http.get(path)
        assert head.status_code == got.status_code == 200, (path, head.status_code)
        assert head.content == b""
        assert head.headers["content-type"] == got.headers["content-type"]
    # Errors too: a HEAD is refused as its GET would be.
    missing = http.head(f"/v0/inboxes/nobody-{harness.new_username()}@example.com")
    assert missing.status_code == 404 and missing.content == b""
    anonymous = httpx.head(harness.server.base_url + "/v0/inboxes")
    assert anonymous.status_code == 401


def test_a_405_names_every_method_of_the_path(http: httpx.Client, inbox: str) -> None:
    """405s had no Allow header; Starlette's own would have named only the first route of the path."""
    cases = {
        f"/v0/inboxes/{inbox}": ("PUT", {"DELETE", "GET", "HEAD", "PATCH"}),
        "/v0/inboxes": ("DELETE", {"GET", "HEAD", "POST"}),
        f"/v0/inboxes/{inbox}/drafts/dft_x/send": ("GET", {"POST"}),
    }
    for path, (method, allowed) in cases.items():
        refused = http.request(method, path)
        assert refused.status_code == 405, (path, refused.text)
        assert refused.json()["code"] == "method_not_allowed"
        assert set(refused.headers["allow"].split(", ")) == allowed, path
    head = http.head(f"/v0/inboxes/{inbox}/drafts/dft_x/send")  # no GET, so no HEAD
    assert head.status_code == 405 and head.headers["allow"] == "POST"


def test_a_trailing_slash_or_a_slash_id_is_a_404_not_a_redirect(http: httpx.Client, inbox: str) -> None:
    """Each was a 307 with an empty body to the path without the slash: an inbox id of "/" (%2F) led a
    GET to the inbox list, and a DELETE to a 405 there."""
    for method, path in [
        ("GET", "/v0/inboxes/"),
        ("POST", "/v0/inboxes/"),
        ("GET", "/v0/inboxes/%2F"),
        ("DELETE", "/v0/inboxes/%2F"),
        ("GET", f"/v0/inboxes/{inbox}/messages/"),
    ]:
        resp = http.request(method, path, json={} if method == "POST" else None)
        assert resp.status_code == 404, (method, path, resp.status_code)
        assert resp.json()["code"] == "not_found" and "location" not in resp.headers
