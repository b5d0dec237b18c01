"""The HTTP edge: one FastAPI app, its route table and its error table."""

from __future__ import annotations

from fastapi import FastAPI

from agentmx import __version__
from agentmx.http import errors, hot_routes
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
    sending,
    threads,
    webhooks,
    websocket,
)
from agentmx.services.runtime import Runtime

# The full route table, in matching order. Search and fixed sub-paths are declared by each
# module before its {id} routes, so an id never swallows them. Matching walks this table on every
# request, so the hot reads (GET message, GET thread) come first; no earlier path overlaps theirs.
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
    webhooks.router,
    api_keys.router,
    lists.router,
    metrics.router,
    inbox_events.router,
    websocket.router,
]


def create_app(rt: Runtime) -> FastAPI:
    app = FastAPI(title="agentmx", version=__version__, docs_url="/docs", redoc_url=None)
    app.state.rt = rt
    errors.install(app)
    app.add_middleware(NulGuard)
    hot_routes.install(app)  # ahead of the routers: matched first
    for router in ROUTERS:
        app.include_router(router)
    return app
