"""Polling webhooks at organization, pod and inbox scope (``W/polling`` for each webhooks prefix ``W``,
API.md 2.7), and the read of their events with the token (an agentmx design, see README).

Included before routes/webhooks.py: ``/webhooks/polling`` would otherwise match ``/webhooks/{webhook_id}``.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request, Response

from agentmx.db.models import PollingWebhook
from agentmx.http import wire
from agentmx.http.bodies import Body, parse
from agentmx.http.deps import CallerDep, RuntimeDep, json_body, query_bool, query_int
from agentmx.http.repeated_query import refuse_repeated_parameter
from agentmx.services import keys, polling_events, polling_webhooks
from agentmx.services.caller import Caller
from agentmx.services.pagination import check_limit
from agentmx.services.runtime import Runtime
from agentmx.services.validation import fail
from agentmx.services.webhooks import Route

router = APIRouter()


class CreatePollingWebhook(Body):
    client_id: str
    event_types: list[str]
    pod_ids: list[str] | None = None
    inbox_ids: list[str] | None = None


def polling_webhook(row: PollingWebhook, token: str | None = None) -> dict[str, Any]:
    return wire.drop_none(
        {
            "webhook_id": row.id,
            "client_id": row.client_id,
            "event_types": row.event_types,
            "pod_ids": row.pod_ids or None,
            "inbox_ids": row.inbox_ids or None,
            "pod_id": row.pod_id,
            "inbox_id": row.inbox_id,
            "updated_at": wire.iso(row.updated_at),
            "created_at": wire.iso(row.created_at),
            "token": token,
        }
    )


def _route(caller: Caller, pod_id: str | None, inbox_id: str | None) -> Route:
    if pod_id is not None:
        caller.require_pod_access(pod_id)
    return Route(pod_id=pod_id, inbox_id=inbox_id)


async def _list(request: Request, rt: Runtime, caller: Caller, route: Route) -> dict[str, Any]:
    caller.require("webhook_read")
    limit = check_limit(query_int(request, "limit"))
    async with rt.db.read() as s:
        page = await polling_webhooks.list_polling_webhooks(
            s,
            caller,
            route,
            limit=limit,
            page_token=request.query_params.get("page_token"),
            ascending=query_bool(request, "ascending"),
        )
    items = [polling_webhook(row) for row in page.items]
    return wire.page("polling_webhooks", items, page.limit, page.next_page_token)


async def _create(request: Request, rt: Runtime, caller: Caller, route: Route) -> dict[str, Any]:
    caller.require("webhook_create")
    body = parse(CreatePollingWebhook, await json_body(request))
    # Scoped variants have no pod_ids (pod) or no channels at all (inbox): ignored there, as for webhooks.
    pod_ids = body.pod_ids if route.pod_id is None and route.inbox_id is None else None
    inbox_ids = body.inbox_ids if route.inbox_id is None else None
    async with rt.db.transaction() as s:
        row, token = await polling_webhooks.create_polling_webhook(
            s,
            caller,
            route,
            client_id=body.client_id,
            event_types=body.event_types,
            pod_ids=pod_ids,
            inbox_ids=inbox_ids,
        )
    return polling_webhook(row, token)


async def _get(rt: Runtime, caller: Caller, route: Route, webhook_id: str) -> dict[str, Any]:
    caller.require("webhook_read")
    async with rt.db.read() as s:
        row = await polling_webhooks.get_polling_webhook(s, caller, route, webhook_id)
    return polling_webhook(row)


async def _delete(rt: Runtime, caller: Caller, route: Route, webhook_id: str) -> Response:
    caller.require("webhook_delete")
    async with rt.db.transaction() as s:
        await polling_webhooks.delete_polling_webhook(s, caller, route, webhook_id)
    return Response(status_code=204)


# Reading events: authenticated by the polling token, not an API key. Declared before {webhook_id}.
@router.get("/v0/webhooks/polling/events")
async def read_events(request: Request, rt: RuntimeDep) -> Response:
    token = keys.parse_bearer(
        keys.one_credential(request.headers.getlist("authorization")),
        fix="Send 'Authorization: Bearer <token>' with the polling webhook's token (amp_…), returned at its creation.",
    )
    sub = await polling_events.subscription(rt, token)  # the 401 before any parameter's 400
    refuse_repeated_parameter(request)
    limit = check_limit(
        query_int(request, "limit"), maximum=polling_events.MAX_LIMIT, default=polling_events.DEFAULT_LIMIT
    )
    wait = query_int(request, "wait") or 0
    if not 0 <= wait <= polling_events.MAX_WAIT:
        raise fail("wait", f"wait must be between 0 and {polling_events.MAX_WAIT} seconds")
    page = await polling_events.poll(
        rt,
        sub,
        token,
        limit=limit,
        cursor=request.query_params.get("cursor"),
        after=request.query_params.get("after"),
        wait=wait,
    )
    # The event bodies are already JSON (the bytes a webhook would be sent): spliced in, not re-encoded.
    head = json.dumps({"count": len(page.bodies), "limit": limit}).encode()[:-1]
    tail = json.dumps({"next_cursor": page.next_cursor, "has_more": page.has_more}).encode()[1:]
    content = head + b', "events": [' + b", ".join(page.bodies) + b"], " + tail
    return Response(content, media_type="application/json")


# Organization scope.
@router.get("/v0/webhooks/polling")
async def list_org(request: Request, rt: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    return await _list(request, rt, caller, Route())


@router.post("/v0/webhooks/polling")
async def create_org(request: Request, rt: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    return await _create(request, rt, caller, Route())


@router.get("/v0/webhooks/polling/{webhook_id}")
async def get_org(webhook_id: str, rt: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    return await _get(rt, caller, Route(), webhook_id)


@router.delete("/v0/webhooks/polling/{webhook_id}", status_code=204)
async def delete_org(webhook_id: str, rt: RuntimeDep, caller: CallerDep) -> Response:
    return await _delete(rt, caller, Route(), webhook_id)


# Pod scope.
@router.get("/v0/pods/{pod_id}/webhooks/polling")
async def list_pod(pod_id: str, request: Request, rt: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    return await _list(request, rt, caller, _route(caller, pod_id, None))


@router.post("/v0/pods/{pod_id}/webhooks/polling")
async def create_pod(pod_id: str, request: Request, rt: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    return await _create(request, rt, caller, _route(caller, pod_id, None))


@router.get("/v0/pods/{pod_id}/webhooks/polling/{webhook_id}")
async def get_pod(pod_id: str, webhook_id: str, rt: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    return await _get(rt, caller, _route(caller, pod_id, None), webhook_id)


@router.delete("/v0/pods/{pod_id}/webhooks/polling/{webhook_id}", status_code=204)
async def delete_pod(pod_id: str, webhook_id: str, rt: RuntimeDep, caller: CallerDep) -> Response:
    return await _delete(rt, caller, _route(caller, pod_id, None), webhook_id)


# Inbox scope.
@router.get("/v0/inboxes/{inbox_id}/webhooks/polling")
async def list_inbox(inbox_id: str, request: Request, rt: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    return await _list(request, rt, caller, _route(caller, None, inbox_id))


@router.post("/v0/inboxes/{inbox_id}/webhooks/polling")
async def create_inbox(inbox_id: str, request: Request, rt: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    return await _create(request, rt, caller, _route(caller, None, inbox_id))


@router.get("/v0/inboxes/{inbox_id}/webhooks/polling/{webhook_id}")
async def get_inbox(inbox_id: str, webhook_id: str, rt: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    return await _get(rt, caller, _route(caller, None, inbox_id), webhook_id)


@router.delete("/v0/inboxes/{inbox_id}/webhooks/polling/{webhook_id}", status_code=204)
async def delete_inbox(inbox_id: str, webhook_id: str, rt: RuntimeDep, caller: CallerDep) -> Response:
    return await _delete(rt, caller, _route(caller, None, inbox_id), webhook_id)
