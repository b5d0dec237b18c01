"""An event's body as it is handed out: a webhook POST body, or one event of a polling read."""

from __future__ import annotations

import json
from typing import Any

from agentmx.mail.stored_extracts import full_event

MAX_BODY = 1_000_000  # bytes; larger message.received bodies lose message.text and message.html
# What goes, in turn, from a message.received body over MAX_BODY: the bodies (API.md), then the
# extracts, which for mail that quotes nothing are as long (a receiver refusing the body would get
# it again on every retry until the webhook is disabled).
_DROPPED = (("text", "html"), ("text", "html", "extracted_text", "extracted_html"))


def encode_body(body: dict[str, Any]) -> bytes:
    """The stored body made whole again (``full_event``) and kept under ``MAX_BODY``, as JSON bytes."""
    body = full_event(body)
    raw = _json(body)
    message = body.get("message")
    for dropped in _DROPPED:
        if len(raw) <= MAX_BODY or not isinstance(message, dict):
            break
        raw = _json({**body, "message": {k: v for k, v in message.items() if k not in dropped}})
    return raw


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
