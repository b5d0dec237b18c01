"""GET message, GET thread and their lists answered at the ASGI level, ahead of FastAPI's middleware stack.

FastAPI's stack (ServerErrorMiddleware, telemetry, body limit, ExceptionMiddleware, exit stack,
the route walk, request_response) took about a third of a GET message's CPU, wrapping both the
call and every ``send``; agentmx adds no middleware of its own to it. ``HotReads`` matches these
paths first and runs the very handlers the FastAPI routes run, with the same caller resolution
(auth, scopes, rate limit) and the same error table (errors.response_for; anything else is the
app's 500, logged and re-raised as ServerErrorMiddleware does). HEAD arrives here as GET
(http/head.py); other requests, and other methods on these paths, go to the FastAPI app unchanged. The FastAPI
declarations stay: they document the routes in OpenAPI.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import compile_path, get_route_path
from starlette.types import ASGIApp, Receive, Scope, Send

from agentmx.db.retryable import retryable
from agentmx.errors import AgentMXError
from agentmx.http import errors
from agentmx.http.deps import get_caller, get_runtime
from agentmx.http.routes import messages, threads

Endpoint = Callable[[Request], Awaitable[Response]]


def _not_search(pattern: str) -> Convertor[str]:
    """A path parameter matching ``pattern`` but not ``search`` (that is the list routes' search)."""

    class NotSearch(Convertor[str]):
        regex = f"(?!search$){pattern}"

        def convert(self, value: str) -> str:
            return value

        def to_string(self, value: str) -> str:
            return value

    return NotSearch()


register_url_convertor("not_search", _not_search("[^/]+"))  # one path segment
register_url_convertor("path_not_search", _not_search(".*"))  # the rest (a message id may hold '/')


async def _message(request: Request) -> Response:
    params = request.path_params
    caller = await get_caller(request)
    return await messages.get_message(
        params["inbox_id"], params["rest"], request, get_runtime(request), caller
    )


def _thread(scope_of: Callable[[dict[str, str]], threads.Scope]) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        caller = await get_caller(request)
        scope = scope_of(request.path_params)
        return await threads.read_thread(
            request, get_runtime(request), caller, scope, request.path_params["thread_id"]
        )

    return endpoint


async def _messages(request: Request) -> Response:
    caller = await get_caller(request)
    return await messages.list_messages(
        request.path_params["inbox_id"], request, get_runtime(request), caller
    )


def _threads(scope_of: Callable[[dict[str, str]], threads.Scope]) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        caller = await get_caller(request)
        return await threads.read_threads(
            request, get_runtime(request), caller, scope_of(request.path_params)
        )

    return endpoint


def _routes() -> list[tuple[re.Pattern[str], Endpoint]]:
    """Path regexes (Starlette's, from the same path templates) and their endpoints, in match order."""
    table: list[tuple[str, Endpoint]] = [(messages.PREFIX + "/{rest:path_not_search}", _message)]
    table += [(prefix + "/{thread_id:not_search}", _thread(of)) for prefix, of in threads.PREFIXES.items()]
    table += [(messages.PREFIX, _messages)]  # the lists: exact paths, so no other route's
    table += [(prefix, _threads(of)) for prefix, of in threads.PREFIXES.items()]
    # Every convertor here returns the matched text as it is, so a match's groups are the params.
    return [(compile_path(path)[0], endpoint) for path, endpoint in table]


ROUTES = _routes()


class HotReads:
    """The ASGI app uvicorn calls: the hot GETs here, everything else to ``app``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            path = get_route_path(scope)
            for regex, endpoint in ROUTES:
                match = regex.match(path)
                if match is not None:
                    scope["path_params"] = match.groupdict()
                    await _serve(endpoint, scope, receive, send)
                    return
        await self.app(scope, receive, send)


async def _serve(endpoint: Endpoint, scope: Scope, receive: Receive, send: Send) -> None:
    unexpected: Exception | None = None
    try:
        response = await endpoint(Request(scope, receive, send))
    except AgentMXError as exc:
        response = errors.response_for(exc)
    except Exception as exc:
        response = errors.unexpected_response(exc)
        unexpected = None if retryable(exc) else exc
    await response(scope, receive, send)
    if unexpected is not None:
        raise unexpected  # for the server's log, as Starlette's ServerErrorMiddleware does
