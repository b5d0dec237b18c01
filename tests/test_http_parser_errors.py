"""Requests uvicorn's parser refuses are answered in the API's error shape, not uvicorn's text/plain.

Found by hand against a running server: an unknown method, raw non-ASCII bytes in the target, a
control character in a header or broken chunking got ``400 Invalid HTTP request received.`` as
text/plain, the one answer of the API without ``{"name", "message"}``. And a request head had no
size limit: anyone, without a key, could make the server buffer 300 MB of header fields.
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from conftest import Harness


def _exchange(harness: Harness, request: bytes) -> tuple[bytes, bytes]:
    with socket.create_connection(("127.0.0.1", harness.server.http_port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):  # the server closes the connection after its answer
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


@pytest.mark.parametrize(
    "request_head",
    [
        b"FOO /v0/inboxes HTTP/1.1\r\nHost: x\r\n",
        b"GET /v0/threads/\xff HTTP/1.1\r\nHost: x\r\n",
        b"GET /v0/inboxes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer am_\x01\r\n",
        b"PATCH /v0/threads/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
def test_a_request_the_parser_refuses_gets_a_json_400(harness: Harness, request_head: bytes) -> None:
    head, body = _exchange(harness, request_head + b"\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), head
    assert b"content-type: application/json" in head.lower(), head
    error = json.loads(body)
    assert error["name"] == "ValidationError" and error["message"], error


def test_a_request_head_over_64_kb_is_refused_before_it_ends(harness: Harness) -> None:
    with socket.create_connection(("127.0.0.1", harness.server.http_port), timeout=10) as sock:
        # Just over the limit, the head unfinished: the server must answer without its end. (Not
        # more: bytes the server never reads would make its close a reset that loses the answer.)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 65536)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    error = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert error["name"] == "ValidationError", error


def test_a_request_head_over_64_kb_is_refused_when_it_arrives_in_one_read(harness: Harness) -> None:
    # Whole in one segment, the head was parsed before its size was checked: a 70 KB one was served.
    pad = b"X-Pad: " + b"a" * 70_000
    head, body = _exchange(
        harness, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + pad + b"\r\n\r\n"
    )
    assert head.startswith(b"HTTP/1.1 431 "), head
    assert json.loads(body)["name"] == "ValidationError", body
    # A request line as long: 431 too (it was a 400, the parser's refusal).
    head, body = _exchange(harness, b"GET /v0/inboxes/" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 "), head
    assert json.loads(body)["name"] == "ValidationError", body


def test_request_heads_under_64_kb_are_served_on_one_connection(harness: Harness) -> None:
    with socket.create_connection(("127.0.0.1", harness.server.http_port), timeout=10) as sock:
        for _ in range(3):
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 60_000 + b"\r\n\r\n")
            answer = b""
            while not answer.endswith(b"}"):
                answer += sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]


def test_a_client_gone_midway_through_its_body_logs_no_traceback(harness: Harness) -> None:
    """Each such request logged two tracebacks (ClientDisconnect as an unhandled error, then uvicorn's
    "Exception in ASGI application"): one for every aborted upload, or chunked body refused midway."""
    auth = f"Authorization: Bearer {harness.api_key}\r\n".encode()
    cut_short = b"POST /v0/inboxes HTTP/1.1\r\nHost: x\r\n" + auth + b'Content-Length: 1000\r\n\r\n{"a": '
    with socket.create_connection(("127.0.0.1", harness.server.http_port), timeout=10) as sock:
        sock.sendall(cut_short)
    bad_chunk = (
        b"POST /v0/inboxes HTTP/1.1\r\nHost: x\r\n"
        + auth
        + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\nzz\r\n\r\n"
    )
    head, _ = _exchange(harness, bad_chunk)
    assert head.startswith(b"HTTP/1.1 400 "), head
    time.sleep(0.5)  # the server notices the first connection's end
    assert _exchange(harness, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")[0].startswith(
        b"HTTP/1.1 200"
    )
    assert "ClientDisconnect" not in harness.server.log()
