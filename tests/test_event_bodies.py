"""events/bodies.encode_body: the bytes handed out (webhook POST bodies, WebSocket frames, polling reads)."""

from __future__ import annotations

import json
from typing import Any

from agentmx.events.bodies import encode_body


def _stdlib(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def _body(**message: Any) -> dict[str, Any]:
    return {"type": "event", "event_type": "message.received", "event_id": "evt_1", "message": message}


def test_bodies_are_the_stdlib_encodings_bytes() -> None:
    texts = [
        "plain",
        "Grüße, 東京 😀",
        'quote " backslash \\ slash /',
        "\x00\x01\x1f\x7f\n\r\t\b\f",
        "\u2028\u2029",
    ]
    body = _body(
        inbox_id="a@example.com",
        subject=texts,
        headers={text: text for text in texts},
        size=4096,
        labels=["received", "unread"],
        cc=None,
        flags=[True, False],
        nested=[{"a": [1, -2, 2**63 - 1, -(2**63)]}],
    )
    assert encode_body(body) == _stdlib(body)


def test_what_orjson_refuses_is_encoded_as_before() -> None:
    body = _body(size=2**70, subject="big")
    assert encode_body(body) == _stdlib(body)
