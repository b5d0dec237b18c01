"""Extracted bodies are stored only where they differ from the body itself, stripped.

``extracted_text``/``extracted_html`` hold a message's new content without its quoted history.
Mail that quotes nothing extracts to its own body, stripped (``mail/quotes``), and storing that
copy too cost SQLite about one more 4 KB page per 4 KB message. So NULL in those columns means
"the body, stripped"; a NULL body has a NULL extract either way. Rows stored with the copy read
the same. Every read goes through ``from_storage`` (``http/wire_mail.message_document``).

Event bodies carry whole message documents, so the event log stores them the same way: without
an extract that is its body stripped (``compact_event``), restored on the way out (``full_event``:
WebSocket frames, webhook bodies). Events stored with it are sent as they are.
"""

from __future__ import annotations

from typing import Any

_PAIRS = (("extracted_text", "text"), ("extracted_html", "html"))


def for_storage(extract: str | None, body: str | None) -> str | None:
    """What to store for ``extract`` (the parse never gives a NULL extract of a body)."""
    return None if body is not None and extract == body.strip() else extract


def from_storage(stored: str | None, body: str | None) -> str | None:
    return body.strip() if stored is None and body is not None else stored


def compact_event(body: dict[str, Any]) -> dict[str, Any]:
    """An event body to store: its message document without the extracts ``full_event`` restores."""
    message = body.get("message")
    if not isinstance(message, dict):
        return body
    # Documents drop None values: a body present is a str, and so is its extract (maybe "").
    same = {
        ext
        for ext, src in _PAIRS
        if isinstance(message.get(src), str) and message.get(ext) == message[src].strip()
    }
    if not same:
        return body
    return {**body, "message": {k: v for k, v in message.items() if k not in same}}


def full_event(body: dict[str, Any]) -> dict[str, Any]:
    """An event body as stored, with its message document's extracts back (a no-op on whole ones)."""
    message = body.get("message")
    if not isinstance(message, dict):
        return body
    missing = {
        ext: message[src].strip()
        for ext, src in _PAIRS
        if ext not in message and isinstance(message.get(src), str)
    }
    if not missing:
        return body
    return {**body, "message": {**message, **missing}}
