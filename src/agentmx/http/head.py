"""HEAD answered wherever GET is (RFC 9110 9.3.2): the app sees a GET, uvicorn sends no body.

The route table declares GET only (FastAPI does not add HEAD as Starlette's Route does), so HEAD
got 405 everywhere. Rewriting the method in a copy of the scope reaches every GET route, the hot
reads included; uvicorn keeps its own scope, still HEAD, and so sends the headers alone, with the
Content-Length the GET would have had. A response that would read a body only to see it dropped
(a file download) asks ``is_head``.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

WAS_HEAD = "agentmx.was_head"


def is_head(scope: Scope) -> bool:
    """Whether the client asked with HEAD, though the app sees GET."""
    return scope.get("method") == "HEAD" or bool(scope.get(WAS_HEAD))


class HeadAsGet:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "HEAD":
            scope = {**scope, "method": "GET", WAS_HEAD: True}
        await self.app(scope, receive, send)
