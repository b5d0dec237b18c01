"""JSON the decoder refuses or no database can store: a 400 in AgentMail's shape, never a 500.

Found by hand against a running server: a number over 4300 digits (ValueError), nesting deeper than
the recursion limit (RecursionError) and lone surrogates (``"\\ud800"``, which neither database nor
UTF-8 takes) were 500s in bodies, JSON-array query parameters and page tokens on both backends; a
NUL inside a JSON-array query parameter or a UTF-16 body got past the NUL guard (a 500 on
PostgreSQL); on the WebSocket such a subscribe frame dropped the connection without a close frame.
"""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from conftest import Harness

DEEP = "[" * 5000
HUGE_NUMBER = "1" + "0" * 5000
LONE = '"\\ud800"'


def obj(key: str, raw_value: str) -> str:
    """A JSON object text with one member whose value is given as raw JSON text."""
    return "{" + json.dumps(key) + ": " + raw_value + "}"


def _token(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


JSON_CT = {"headers": {"Content-Type": "application/json"}}


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("PATCH", "/v0/inboxes/{inbox}", {"content": obj("display_name", HUGE_NUMBER), **JSON_CT}),
        ("PATCH", "/v0/inboxes/{inbox}", {"content": obj("display_name", DEEP), **JSON_CT}),
        ("PATCH", "/v0/inboxes/{inbox}", {"content": obj("display_name", LONE), **JSON_CT}),
        ("PATCH", "/v0/inboxes/{inbox}", {"content": b'{"display_name": "a\xed\xa0\x80"}', **JSON_CT}),
        ("PATCH", "/v0/inboxes/{inbox}", {"content": obj("metadata", obj("k", LONE)), **JSON_CT}),
        ("POST", "/v0/inboxes/{inbox}/drafts", {"content": obj("subject", LONE), **JSON_CT}),
        ("POST", "/v0/lists/send/allow", {"content": '{"entry": "\\udfff@x.example"}', **JSON_CT}),
        ("GET", "/v0/threads", {"params": {"labels": f"[{HUGE_NUMBER}]"}}),
        ("GET", "/v0/threads", {"params": {"labels": DEEP}}),
        ("GET", "/v0/threads", {"params": {"senders": f"[{LONE}]"}}),
        ("GET", "/v0/inboxes/{inbox}/messages", {"params": {"labels": f"[{LONE}]"}}),
        ("GET", "/v0/inboxes/{inbox}/messages", {"params": {"subject": '["a\\u0000"]'}}),
        ("GET", "/v0/metrics/events", {"params": {"event_types": f"[{LONE}]"}}),
        ("GET", "/v0/threads", {"params": {"page_token": _token(DEEP)}}),
        ("GET", "/v0/inboxes/{inbox}/events", {"params": {"page_token": _token(DEEP)}}),
        ("GET", "/v0/inboxes", {"params": {"page_token": _token('{"k":"inboxes","v":["2026-01-01T00:00:00+00:00","\\ud800"]}')}}),
        ("GET", "/v0/inboxes", {"params": {"page_token": _token('{"k":"inboxes","v":["2026-01-01T00:00:00+00:00","a\\u0000"]}')}}),
    ],
)  # fmt: skip
def test_unusable_json_is_a_400(
    http: httpx.Client, inbox: str, method: str, path: str, kwargs: dict[str, Any]
) -> None:
    resp = http.request(method, path.format(inbox=inbox), **kwargs)
    assert resp.status_code == 400, resp.text
    assert resp.json()["name"] == "ValidationError"
    assert http.get(f"/v0/inboxes/{inbox}").status_code == 200  # the connection and server carry on


def test_a_utf16_body_holding_nul_is_refused(http: httpx.Client, inbox: str) -> None:
    body = '{"metadata": {"k": "a\\u0000b"}}'.encode("utf-16")
    resp = http.patch(f"/v0/inboxes/{inbox}", content=body, headers={"Content-Type": "application/json"})
    assert resp.status_code == 400, resp.text
    assert "NUL" in resp.json()["message"]


def test_surrogate_pairs_and_escaped_backslashes_are_ordinary_text(http: httpx.Client, inbox: str) -> None:
    resp = http.patch(
        f"/v0/inboxes/{inbox}",
        content=b'{"display_name": "ok \\ud83d\\ude00 \\\\ud800"}',
        headers={"Content-Type": "application/json"},
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["display_name"] == "ok \U0001f600 \\ud800"


@pytest.mark.parametrize(
    "frame",
    [
        '{"type": "subscribe", "inbox_ids": ["\\ud800"]}',
        '{"type": "subscribe", "pod_ids": ["a\\u0000"]}',
        '{"type": "subscribe", "after_event_id": "\\udfff"}',
        '{"type": "subscribe", "x": ' + HUGE_NUMBER + "}",
        DEEP,
    ],
)
def test_a_websocket_frame_of_unusable_json_gets_an_error_frame(harness: Harness, frame: str) -> None:
    with connect(f"{harness.server.ws_url}/v0?api_key={harness.api_key}") as ws:
        ws.send(frame)
        reply = json.loads(ws.recv(timeout=10))
        assert reply["type"] == "error" and reply["name"] == "ValidationError", reply
        ws.send('{"type": "subscribe"}')  # the stream carries on
        assert json.loads(ws.recv(timeout=10))["type"] == "subscribed"


def test_a_body_declared_over_6_mb_is_refused_before_it_is_read(harness: Harness, inbox: str) -> None:
    # Every route buffered whatever body came (a 400 MB PATCH took the server past 1.3 GB).
    head = (
        f"PATCH /v0/inboxes/{inbox} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {harness.api_key}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", harness.server.http_port), timeout=5) as sock:
        sock.sendall(head.encode() + b'{"display_name": "')
        answer = b""
        while b"exceeds" not in answer and (chunk := sock.recv(65536)):  # at once, not after a timeout
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert b"exceeds 6 MB" in answer


def test_a_streamed_body_over_6_mb_is_refused(http: httpx.Client, inbox: str) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"display_name": "'
        for _ in range(7):
            yield b"a" * 1024 * 1024

    resp = http.patch(f"/v0/inboxes/{inbox}", content=chunks(), headers={"Content-Type": "application/json"})
    assert resp.status_code == 400, resp.text
    assert resp.json()["message"] == "Request body exceeds 6 MB"


def test_a_key_twice_in_one_object_is_a_400(http: httpx.Client, inbox: str) -> None:
    """The last of two keys won (json's rule): a proxy or log reading the first saw another request."""
    for body, key in [
        (b'{"display_name": "a", "display_name": "b"}', "display_name"),
        (b'{"metadata": {"k": 1, "k": 2}}', "k"),
    ]:
        resp = http.patch(f"/v0/inboxes/{inbox}", content=body, headers={"Content-Type": "application/json"})
        assert resp.status_code == 400, resp.text
        assert resp.json()["code"] == "validation_error" and repr(key) in resp.json()["message"]
    listed = http.get("/v0/threads", params={"labels": '[{"a": 1, "a": 2}]'})
    assert listed.status_code == 400, listed.text
    assert http.get(f"/v0/inboxes/{inbox}").json().get("display_name") != "b"
