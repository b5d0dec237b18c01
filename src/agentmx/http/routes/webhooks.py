"""Webhooks at organization (/v0/webhooks), pod (/v0/pods/{pod_id}/webhooks) and inbox scope
(/v0/inboxes/{inbox_id}/webhooks), with their write-only custom headers (API.md 2.7)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from agentmx.db.models import Webhook
from agentmx.http import wire
from agentmx.http.bodies import Body, parse
from agentmx.http.deps import CallerDep, RuntimeDep, json_body, query_bool, query_int
from agentmx.services import webhooks
from agentmx.services.caller import Caller
from agentmx.services.pagination import check_limit
from agentmx.services.runtime import Runtime
from agentmx.services.webhooks import Route

router = APIRouter()


class CreateWebhook(Body):
    url: str
    event_types: list[str] | None = None
    pod_ids: list[str] | None = None
    inbox_ids: list[str] | None = None
    client_id: str | None = None
    headers: dict[str, str] | None = None


class UpdateWebhook(Body):
    add_pod_ids: list[str] | None = None
    remove_pod_ids: list[str] | None = None
    add_inbox_ids: list[str] | None = None
    remove_inbox_ids: list[str] | None = None
    event_types: list[str] | None = None
    enabled: bool | None = None


class UpdateHeaders(Body):
    headers: dict[str, str] | None = None
    remove_headers: list[str] | None = None


def webhook(row: Webhook) -> dict[str, Any]:
    return wire.drop_none(
        {
            "webhook_id": row.id,
            "url": row.url,
            "event_types": row.event_types,
            "pod_ids": row.pod_ids or None,
            "inbox_ids": row.inbox_ids or None,
            "pod_id": row.pod_id,
            "inbox_id": row.inbox_id,
            "secret": row.secret,
            "enabled": row.enabled,
            "updated_at": wire.iso(row.updated_at),
            "created_at": wire.iso(row.created_at),
            "client_id": row.client_id,
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
        page = await webhooks.list_webhooks(
            s,
            caller,
            route,
            limit=limit,
            page_token=request.query_params.get("page_token"),
            ascending=query_bool(request, "ascending"),
        )
    return wire.page("webhooks", [webhook(w) for w in page.items], page.limit, page.next_page_token)


async def _create(request: Request, rt: Runtime, caller: Caller, route: Route) -> dict[str, Any]:
    caller.require("webhook_create")
    body = parse(CreateWebhook, await json_body(request))
    # Scoped variants have no pod_ids (pod) or no channels at all (inbox): ignore them there.
    pod_ids = body.pod_ids if route.pod_id is None and route.inbox_id is None else None
    inbox_ids = body.inbox_ids if route.inbox_id is None else None
    await webhooks.check_webhook_url(rt, body.url)  # resolves the host: before the transaction
    async with rt.db.transaction() as s:
        row = await webhooks.create_webhook(
            s,
            caller,
            route,
            url=body.url,
            event_types=body.event_types,
            pod_ids=pod_ids,
            inbox_ids=inbox_ids,
            client_id=body.client_id,
            headers=body.headers,
        )
    return webhook(row)


async def _get(rt: Runtime, caller: Caller, route: Route, webhook_id: str) -> dict[str, Any]:
    caller.require("webhook_read")
    async with rt.db.read() as s:
        row = await webhooks.get_webhook(s, caller, route, webhook_id)
    return webhook(row)


async def _header_names(rt: Runtime, caller: Caller, route: Route, webhook_id: str) -> dict[str, Any]:
    caller.require("webhook_read")
    async with rt.db.read() as s:
        row = await webhooks.get_webhook(s, caller, route, webhook_id)
    return {"header_names": sorted(row.headers)}


async def _update(
    request: Request, rt: Runtime, caller: Caller, route: Route, webhook_id: str
) -> dict[str, Any]:
    caller.require("webhook_update")
    body = parse(UpdateWebhook, await json_body(request))
    async with rt.db.transaction() as s:
        row = await webhooks.update_webhook(
            s,
            caller,
            route,
            webhook_id,
            add_pod_ids=body.add_pod_ids,
            remove_pod_ids=body.remove_pod_ids,
            add_inbox_ids=body.add_inbox_ids,
            remove_inbox_ids=body.remove_inbox_ids,
            event_types=body.event_types,
            enabled=body.enabled,
        )
    return webhook(row)


async def _update_headers(
    request: Request, rt: Runtime, caller: Caller, route: Route, webhook_id: str
) -> Response:
    caller.require("webhook_update")
    body = parse(UpdateHeaders, await json_body(request))
    async with rt.db.transaction() as s:
        await webhooks.update_headers(
            s, caller, route, webhook_id, headers=body.headers, remove_headers=body.remove_headers
        )
    return Response(status_code=204)


async def _delete(rt: Runtime, caller: Caller, route: Route, webhook_id: str) -> Response:
    caller.require("webhook_delete")
    async with rt.db.transaction() as s:
        await webhooks.delete_webhook(s, caller, route, webhook_id)
    return Response(status_code=204)


# Organization scope. (routes/polling_webhooks.py is included first: /polling would match {webhook_id}.)
@router.get("/v0/webhooks")
async def list_org(request: Request, rt: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    return await _list(request, rt, caller, Route())


@router.post("/v0/webhooks")
async def create_org(request: Request, rt: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    return await _create(request, rt, caller, Route())


@router.get("/v0/webhooks/{webhook_id}/headers")
async def headers_org(webhook_id: str, rt: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    return await _header_names(rt, caller, Route(), webhook_id)


@router.patch("/v0/webhooks/{webhook_id}/headers", status_code=204)
async def update_headers_org(
    webhook_id: str, request: Request, rt: RuntimeDep, caller: CallerDep
) -> Response:
    return await _update_headers(request, rt, caller, Route(), webhook_id)


@router.get("/v0/webhooks/{webhook_id}")
async def get_org(webhook_id: str, rt: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    return await _get(rt, caller, Route(), webhook_id)


@router.patch("/v0/webhooks/{webhook_id}")
async def update_org(webhook_id: str, request: Request, rt: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    return await _update(request, rt, caller, Route(), webhook_id)


@router.delete("/v0/webhooks/{webhook_id}", status_code=204)
async def delete_org(webhook_id: str, rt: RuntimeDep, caller: CallerDep) -> Response:
    return await _delete(rt, caller, Route(), webhook_id)


# Pod scope.
@router.get("/v0/pods/{pod_id}/webhooks")
async def list_pod(pod_id: str, request: Request, rt: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    return await _list(request, rt, caller, _route(caller, pod_id, None))


@router.post("/v0/pods/{pod_id}/webhooks")
async def create_pod(pod_id: str, request: Request, rt: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    return await _create(request, rt, caller, _route(caller, pod_id, None))


@router.get("/v0/pods/{pod_id}/webhooks/{webhook_id}/headers")
async def headers_pod(pod_id: str, webhook_id: str, rt: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    return await _header_names(rt, caller, _route(caller, pod_id, None), webhook_id)


@router.patch("/v0/pods/{pod_id}/webhooks/{webhook_id}/headers", status_code=204)
async def update_headers_pod(
    pod_id: str, webhook_id: str, request: Request, rt: RuntimeDep, caller: CallerDep
) -> Response:
    return await _update_headers(request, rt, caller, _route(caller, pod_id, None), webhook_id)


@router.get("/v0/pods/{pod_id}/webhooks/{webhook_id}")
async def get_pod(pod_id: str, webhook_id: str, rt: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    return await _get(rt, caller, _route(caller, pod_id, None), webhook_id)


@router.patch("/v0/pods/{pod_id}/webhooks/{webhook_id}")
async def update_pod(
    pod_id: str, webhook_id: str, request: Request, rt: RuntimeDep, caller: CallerDep
) -> dict[str, Any]:
    return await _update(request, rt, caller, _route(caller, pod_id, None), webhook_id)


@router.delete("/v0/pods/{pod_id}/webhooks/{webhook_id}", status_code=204)
async def delete_pod(pod_id: str, webhook_id: str, rt: RuntimeDep, caller: CallerDep) -> Response:
    return await _delete(rt, caller, _route(caller, pod_id, None), webhook_id)


# Inbox scope.
@router.get("/v0/inboxes/{inbox_id}/webhooks")
async def list_inbox(inbox_id: str, request: Request, rt: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    return await _list(request, rt, caller, _route(caller, None, inbox_id))


@router.post("/v0/inboxes/{inbox_id}/webhooks")
async def create_inbox(inbox_id: str, request: Request, rt: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    return await _create(request, rt, caller, _route(caller, None, inbox_id))


@router.get("/v0/inboxes/{inbox_id}/webhooks/{webhook_id}/headers")
async def headers_inbox(inbox_id: str, webhook_id: str, rt: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    return await _header_names(rt, caller, _route(caller, None, inbox_id), webhook_id)


@router.patch("/v0/inboxes/{inbox_id}/webhooks/{webhook_id}/headers", status_code=204)
async def update_headers_inbox(
    inbox_id: str, webhook_id: str, request: Request, rt: RuntimeDep, caller: CallerDep
) -> Response:
    return await _update_headers(request, rt, caller, _route(caller, None, inbox_id), webhook_id)


@router.get("/v0/inboxes/{inbox_id}/webhooks/{webhook_id}")
async def get_inbox(inbox_id: str, webhook_id: str, rt: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    return await _get(rt, caller, _route(caller, None, inbox_id), webhook_id)


@router.patch("/v0/inboxes/{inbox_id}/webhooks/{webhook_id}")
async def update_inbox(
    inbox_id: str, webhook_id: str, request: Request, rt: RuntimeDep, caller: CallerDep
) -> dict[str, Any]:
    return await _update(request, rt, caller, _route(caller, None, inbox_id), webhook_id)


@router.delete("/v0/inboxes/{inbox_id}/webhooks/{webhook_id}", status_code=204)
async def delete_inbox(inbox_id: str, webhook_id: str, rt: RuntimeDep, caller: CallerDep) -> Response:
    return await _delete(rt, caller, _route(caller, None, inbox_id), webhook_id)
