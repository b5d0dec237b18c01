"""Refuse NUL characters in request paths, query strings and JSON bodies with a 400.

PostgreSQL text cannot hold U+0000: an id like ``a%00b`` failed inside the driver (a 500 on
PostgreSQL, a plain 404 on SQLite). Refusing it at the edge gives one answer on both backends.
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from agentmx.errors import ValidationFailed
from agentmx.http.errors import response_for

NUL_MESSAGE = "Request contains a NUL character"


def contains_nul(value: Any) -> bool:
    """Whether a parsed JSON value holds U+0000 in any string (keys included)."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(contains_nul(k) or contains_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(contains_nul(item) for item in value)
    return False


def check_json(raw: bytes, parsed: Any) -> None:
    """400 if a JSON body holds NUL; the byte scan keeps the walk off the common path."""
    if b"\\u0000" in raw and contains_nul(parsed):
        raise ValidationFailed(NUL_MESSAGE, [{"path": [], "message": "NUL character in a string"}])


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
