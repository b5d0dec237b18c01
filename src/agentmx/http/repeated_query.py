"""Refuse a query parameter given twice unless it is a list (400 naming it), for every HTTP route.

Routes read single values with ``query_params.get``, which takes the last copy: ``?limit=1&limit=500``
was read as 500, while a proxy or cache in front may act on the first, so the two would read different
requests (as with a header or a JSON key given twice, which are refused too). The SDK never repeats a
key: it sends each argument once and a list as one JSON array (API.md 1.3). Lists may still come as
repeated keys (curl, other clients), so ``LIST_PARAMETERS`` are let through; ``deps.query_list``
reads only those. The WebSocket route is not guarded here: two ``api_key`` are its 401, and a repeated
resume point (``after_event_id``) its error frame at the first subscribe (``routes/websocket.py``).
"""

from __future__ import annotations

from collections import Counter
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from agentmx.errors import ValidationFailed
from agentmx.http.errors import response_for

LIST_PARAMETERS = frozenset(
    {
        "labels",
        "from",
        "to",
        "subject",
        "senders",
        "recipients",
        "event_types",
        "usage_types",
        "rate_types",
    }
)


def repeated_parameter(query_string: bytes) -> str | None:
    """The first single-value parameter given more than once, keys read as Starlette reads them."""
    if b"&" not in query_string:  # the common case: one parameter or none
        return None
    counts = Counter(key for key, _ in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True))
    return next((key for key, n in counts.items() if n > 1 and key not in LIST_PARAMETERS), None)


def _refusal(name: str) -> ValidationFailed:
    return ValidationFailed(
        f"{name} must be given once",
        [{"path": [name], "message": "repeated query parameter"}],
        fix=f"Send one {name} parameter.",
    )


class RepeatedQueryGuard:
    """Pure ASGI middleware, outside the hot reads so that they refuse the same requests."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (name := repeated_parameter(scope["query_string"])) is not None:
            await response_for(_refusal(name))(scope, receive, send)
            return
        await self.app(scope, receive, send)
