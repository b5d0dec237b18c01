"""The message and thread list GETs as plain Starlette routes, ahead of the FastAPI route table.

The reason is hot_routes': FastAPI's route walk and dependency solving cost about a tenth of a list
request's CPU. These routes call the very same handlers with the same caller resolution, and
errors reach the same exception handlers; the FastAPI declarations stay for OpenAPI.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response

from agentmx.http.deps import get_caller, get_runtime
from agentmx.http.hot_routes import _add_get
from agentmx.http.routes import messages, threads


async def _messages(request: Request) -> Response:
    caller = await get_caller(request)
    return await messages.list_messages(
        request.path_params["inbox_id"], request, get_runtime(request), caller
    )


def _threads(scope_of: Callable[[dict[str, str]], threads.Scope]) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        caller = await get_caller(request)
        return await threads.read_threads(
            request, get_runtime(request), caller, scope_of(request.path_params)
        )

    return endpoint


def install(app: FastAPI) -> None:
    """Call before the FastAPI routers are included, so these are matched first."""
    _add_get(app, messages.PREFIX, _messages)
    for prefix, scope_of in threads.PREFIXES.items():
        _add_get(app, prefix, _threads(scope_of))
