"""The HTTP edge: one FastAPI app, its route table and its error table."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.types import ASGIApp

from agentmx import __version__
from agentmx.http import errors, hot_routes
from agentmx.http.head import HeadAsGet
from agentmx.http.nul_guard import NulGuard
from agentmx.http.routes import (
    api_keys,
    attachments,
    domains,
    drafts,
    health,
    inbox_events,
    inboxes,
    lists,
    messages,
    metrics,
    organizations,
    pods,
    polling_webhooks,
    sending,
    threads,
    webhooks,
    websocket,
)
from agentmx.services.runtime import Runtime

# The full route table, in matching order. Search and fixed sub-paths are declared by each
# module before its {id} routes, so an id never swallows them. Matching walks this table on every
# request; the hot reads (GET message, GET thread) are matched ahead of it, in http/hot_routes.py.
ROUTERS = [
    sending.router,  # before messages: /messages/send must not reach a {message_id} route
    messages.router,
    threads.router,
    health.router,
    organizations.router,
    pods.router,
    inboxes.router,
    drafts.router,
    attachments.router,
    domains.router,
    polling_webhooks.router,  # before webhooks: /webhooks/polling must not reach {webhook_id}
    webhooks.router,
    api_keys.router,
    lists.router,
    metrics.router,
    inbox_events.router,
    websocket.router,
]


class AgentmxApp(FastAPI):
    def build_middleware_stack(self) -> ASGIApp:
        # The hot reads are answered ahead of the whole stack (http/hot_routes.py).
        # NulGuard is outermost: the hot reads refuse what every other route does.
        stack = HeadAsGet(hot_routes.HotReads(super().build_middleware_stack()))
        return NulGuard(stack)


def create_app(rt: Runtime) -> FastAPI:
    # No trailing-slash redirects: /v0/inboxes/%2F (an id of "/") was a 307 to the inbox list, and
    # every redirect was an empty body built from the client's Host; a 404 in the error shape instead.
    app = AgentmxApp(
        title="agentmx", version=__version__, docs_url="/docs", redoc_url=None, redirect_slashes=False
    )
    app.state.rt = rt
    errors.install(app)
    for router in ROUTERS:
        app.include_router(router)
    return app
