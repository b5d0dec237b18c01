"""Inboxes at organization scope (/v0/inboxes) and pod scope (/v0/pods/{pod_id}/inboxes)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from agentmx.http import wire
from agentmx.http.bodies import Body, given, parse
from agentmx.http.deps import CallerDep, RuntimeDep, json_body, query_bool, query_int
from agentmx.services import cache_notify, inboxes
from agentmx.services.caller import Caller
from agentmx.services.pagination import check_limit
from agentmx.services.runtime import Runtime

router = APIRouter()


class CreateInbox(Body):
    username: str | None = None
    domain: str | None = None
    display_name: str | None = None
    client_id: str | None = None
    status: str | None = None
    metadata: dict[str, Any] | None = None


class UpdateInbox(Body):
    display_name: str | None = None
    status: str | None = None
    metadata: dict[str, Any] | None = None


def _pod_scope(caller: Caller, pod_id: str | None) -> None:
    if pod_id is not None:
        caller.require_pod_access(pod_id)


async def _list(request: Request, rt: Runtime, caller: Caller, pod_id: str | None) -> dict[str, Any]:
    caller.require("inbox_read")
    _pod_scope(caller, pod_id)
    limit = check_limit(query_int(request, "limit"))
    async with rt.db.read() as s:
        page = await inboxes.list_inboxes(
            s,
            caller,
            pod_id=pod_id,
            limit=limit,
            page_token=request.query_params.get("page_token"),
            ascending=query_bool(request, "ascending"),
        )
    return wire.page("inboxes", [wire.inbox(i) for i in page.items], page.limit, page.next_page_token)


async def _search(request: Request, rt: Runtime, caller: Caller, pod_id: str | None) -> dict[str, Any]:
    caller.require("inbox_read")
    _pod_scope(caller, pod_id)
    limit = check_limit(query_int(request, "limit"), maximum=100)
    async with rt.db.read() as s:
        page = await inboxes.search_inboxes(
            s,
            caller,
            q=request.query_params.get("q", ""),
            pod_id=pod_id,
            limit=limit,
            page_token=request.query_params.get("page_token"),
        )
    return wire.page("inboxes", [wire.inbox(i) for i in page.items], page.limit, page.next_page_token)


async def _create(request: Request, rt: Runtime, caller: Caller, pod_id: str | None) -> dict[str, Any]:
    caller.require("inbox_create")
    if caller.inbox_id:
        caller.require_org()
    _pod_scope(caller, pod_id)
    body = parse(CreateInbox, await json_body(request))
    async with rt.db.transaction() as s:
        inbox = await inboxes.create_inbox(
            s,
            rt,
            caller,
            pod_id=pod_id,
            username=body.username,
            domain=body.domain,
            display_name=body.display_name,
            client_id=body.client_id,
            status=body.status,
            metadata=body.metadata,
        )
    return wire.inbox(inbox)


async def _get(rt: Runtime, caller: Caller, inbox_id: str, pod_id: str | None) -> dict[str, Any]:
    caller.require("inbox_read")
    _pod_scope(caller, pod_id)
    async with rt.db.read() as s:
        inbox = await inboxes.get_inbox(s, caller, inbox_id, pod_id)
    return wire.inbox(inbox)


async def _update(
    request: Request, rt: Runtime, caller: Caller, inbox_id: str, pod_id: str | None
) -> dict[str, Any]:
    caller.require("inbox_update")
    _pod_scope(caller, pod_id)
    body = parse(UpdateInbox, await json_body(request))
    unset = inboxes.UNSET
    async with rt.db.transaction() as s:
        inbox = await inboxes.update_inbox(
            s,
            caller,
            inbox_id,
            pod_id=pod_id,
            display_name=body.display_name if given(body, "display_name") else unset,
            status=body.status if given(body, "status") else unset,
            metadata=body.metadata if given(body, "metadata") else unset,
        )
    return wire.inbox(inbox)


async def _delete(rt: Runtime, caller: Caller, inbox_id: str, pod_id: str | None) -> Response:
    caller.require("inbox_delete")
    _pod_scope(caller, pod_id)
    async with rt.db.transaction() as s:
        await cache_notify.keys_changed(s, rt)  # the inbox's keys are deleted with it
        await inboxes.delete_inbox(s, caller, inbox_id, pod_id)
    return Response(status_code=204)


# Organization scope. /search is declared before /{inbox_id} so it is never taken for an address.
@router.get("/v0/inboxes")
async def list_inboxes(request: Request, rt: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    return await _list(request, rt, caller, None)


@router.get("/v0/inboxes/search")
async def search_inboxes(request: Request, rt: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    return await _search(request, rt, caller, None)


@router.post("/v0/inboxes")
async def create_inbox(request: Request, rt: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    return await _create(request, rt, caller, None)


@router.get("/v0/inboxes/{inbox_id}")
async def get_inbox(inbox_id: str, rt: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    return await _get(rt, caller, inbox_id, None)


@router.patch("/v0/inboxes/{inbox_id}")
async def update_inbox(inbox_id: str, request: Request, rt: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    return await _update(request, rt, caller, inbox_id, None)


@router.delete("/v0/inboxes/{inbox_id}", status_code=204)
async def delete_inbox(inbox_id: str, rt: RuntimeDep, caller: CallerDep) -> Response:
    return await _delete(rt, caller, inbox_id, None)


# Pod scope.
@router.get("/v0/pods/{pod_id}/inboxes")
async def list_pod_inboxes(
    pod_id: str, request: Request, rt: RuntimeDep, caller: CallerDep
) -> dict[str, Any]:
    return await _list(request, rt, caller, pod_id)


@router.get("/v0/pods/{pod_id}/inboxes/search")
async def search_pod_inboxes(
    pod_id: str, request: Request, rt: RuntimeDep, caller: CallerDep
) -> dict[str, Any]:
    return await _search(request, rt, caller, pod_id)


@router.post("/v0/pods/{pod_id}/inboxes")
async def create_pod_inbox(
    pod_id: str, request: Request, rt: RuntimeDep, caller: CallerDep
) -> dict[str, Any]:
    return await _create(request, rt, caller, pod_id)


@router.get("/v0/pods/{pod_id}/inboxes/{inbox_id}")
async def get_pod_inbox(pod_id: str, inbox_id: str, rt: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    return await _get(rt, caller, inbox_id, pod_id)


@router.patch("/v0/pods/{pod_id}/inboxes/{inbox_id}")
async def update_pod_inbox(
    pod_id: str, inbox_id: str, request: Request, rt: RuntimeDep, caller: CallerDep
) -> dict[str, Any]:
    return await _update(request, rt, caller, inbox_id, pod_id)


@router.delete("/v0/pods/{pod_id}/inboxes/{inbox_id}", status_code=204)
async def delete_pod_inbox(pod_id: str, inbox_id: str, rt: RuntimeDep, caller: CallerDep) -> Response:
    return await _delete(rt, caller, inbox_id, pod_id)
