"""Refuse a query parameter given twice unless it is a list (400 naming it), once the caller is authenticated.

Routes read single values with ``query_params.get``, which takes the last copy: ``?limit=1&limit=500``
was read as 500, while a proxy or cache in front may act on the first, so the two would read different
requests (as with a header or a JSON key given twice, which are refused too). The SDK never repeats a
key: it sends each argument once and a list as one JSON array (API.md 1.3). Lists may still come as
repeated keys (curl, other clients), so ``LIST_PARAMETERS`` are let through; ``deps.query_list``
reads only those. Checked where a route authenticates (``deps.get_caller``; the polling read, by its
token), not before routing: an unauthenticated caller gets the 401 first, as for every other 4xx, not a
lesson in parameter rules. Routes that read no query parameter (downloads, health) need no check.
The WebSocket route has its own: two ``api_key`` are its 401, and a repeated resume point
(``after_event_id``) its error frame at the first subscribe (``routes/websocket.py``).
"""

from __future__ import annotations

from collections import Counter
from urllib.parse import parse_qsl

from starlette.requests import Request

from agentmx.errors import ValidationFailed

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


def refuse_repeated_parameter(request: Request) -> None:
    """400 naming the first single-value parameter ``request`` repeats; call after authenticating it."""
    if (name := repeated_parameter(request.scope["query_string"])) is not None:
        raise _refusal(name)
