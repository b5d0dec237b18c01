"""HEAD answered wherever GET is (RFC 9110 9.3.2): the app sees a GET, uvicorn sends no body.

The route table declares GET only (FastAPI does not add HEAD as Starlette's Route does), so HEAD
got 405 everywhere. Rewriting the method in a copy of the scope reaches every GET route, the hot
reads included; uvicorn keeps its own scope, still HEAD, and so sends the headers alone, with the
Content-Length the GET would have had.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send


class HeadAsGet:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "HEAD":
            scope = {**scope, "method": "GET"}
        await self.app(scope, receive, send)
