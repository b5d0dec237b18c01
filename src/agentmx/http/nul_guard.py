"""Refuse NUL characters and lone surrogates in request paths, query strings and JSON with a 400.

PostgreSQL text cannot hold U+0000: an id like ``a%00b`` failed inside the driver (a 500 on
PostgreSQL, a plain 404 on SQLite). A lone UTF-16 surrogate (``"\\ud800"`` in JSON) is no character
at all: neither database nor any encoder takes it, and it was a 500 on both. Refusing them at the
edge gives one answer on both backends.
"""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from agentmx.errors import ValidationFailed
from agentmx.http.errors import response_for

NUL_MESSAGE = "Request contains a NUL character"
SURROGATE_MESSAGE = "Request contains a lone surrogate, which is not valid Unicode"
_SURROGATE = re.compile("[\ud800-\udfff]")
# One in JSON text: escaped, or as the raw character (json.loads reads bytes with surrogatepass).
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")


def _strings(value: Any) -> list[str]:
    """Every string in a parsed JSON value, keys included."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return []


def contains_nul(value: Any) -> bool:
    """Whether a parsed JSON value holds U+0000 in any string (keys included)."""
    return any("\x00" in s for s in _strings(value))


def contains_surrogate(value: Any) -> bool:
    """Whether a parsed JSON value holds a lone surrogate (json.loads joins the valid pairs)."""
    return any(_SURROGATE.search(s) for s in _strings(value))


def check_json(text: str, parsed: Any) -> None:
    """400 if JSON text holds NUL or a lone surrogate; the text scans keep the walks off the common path."""
    if "\\u0000" in text and contains_nul(parsed):
        raise ValidationFailed(NUL_MESSAGE, [{"path": [], "message": "NUL character in a string"}])
    if _may_hold_surrogate(text) and contains_surrogate(parsed):
        raise ValidationFailed(SURROGATE_MESSAGE, [{"path": [], "message": "lone surrogate in a string"}])


def _may_hold_surrogate(text: str) -> bool:
    """Cheap on the common body: one regex over 6 MB of base64 attachments held the loop for 35 ms;
    ``in`` and ``isascii`` skip most of the text (6 ms at most, with an escape in it)."""
    escaped = "\\u" in text and _ESCAPED_SURROGATE.search(text) is not None
    return escaped or (not text.isascii() and _SURROGATE.search(text) is not None)


class DuplicateKey(ValueError):
    """A JSON object gave one key twice (``args[0]``): refused by ``loads`` and by the WebSocket's frames."""

    @property
    def message(self) -> str:
        return f"an object has the key {self.args[0]!r} twice"


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose keys are unique (RFC 7493 2.3): json takes the last of two, a proxy or
    another parser in front of agentmx may take the first, so the two would read different requests."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(key)
            seen.add(key)
    return obj


def loads(raw: bytes | str, what: str, path: list[str]) -> Any:
    """Parsed JSON from a client (a body, a query parameter, a page token), or a 400 naming ``what``.

    Every way json refuses input is a 400: syntax, numbers over 4300 digits (ValueError), nesting
    deeper than the interpreter's recursion limit (RecursionError); so is a key twice in one object.
    """
    try:
        # As json.loads reads bytes (UTF-8, -16 or -32), so that check_json sees what it parsed.
        text = raw if isinstance(raw, str) else raw.decode(json.detect_encoding(raw), "surrogatepass")
        parsed = json.loads(text, object_pairs_hook=unique_keys)
    except DuplicateKey as exc:
        raise ValidationFailed(f"{what}: {exc.message}", [{"path": path, "message": exc.message}]) from exc
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValidationFailed(f"{what} is not valid JSON", [{"path": path, "message": str(exc)}]) from exc
    check_json(text, parsed)
    return parsed


class NulGuard:
    """Pure ASGI middleware: one substring test per request on the path and the raw query string."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and (
            "\x00" in scope["path"] or b"%00" in scope["query_string"]
        ):
            if scope["type"] == "http":
                error = ValidationFailed(NUL_MESSAGE, [{"path": [], "message": "NUL character in the URL"}])
                await response_for(error)(scope, receive, send)
                return
            await send({"type": "websocket.close", "code": 1008})
            return
        await self.app(scope, receive, send)
