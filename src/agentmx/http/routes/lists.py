"""Allow/block lists at organization (/v0/lists), pod and inbox scope."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from agentmx.db.models import ListEntry
from agentmx.http import wire
from agentmx.http.bodies import Body, parse
from agentmx.http.deps import CallerDep, RuntimeDep, json_body, query_int
from agentmx.services import lists
from agentmx.services.caller import Caller
from agentmx.services.inboxes import get_inbox, pin_owner
from agentmx.services.lists import ListScope
from agentmx.services.pagination import check_limit
from agentmx.services.pods import get_pod
from agentmx.services.runtime import Runtime

router = APIRouter()


class CreateEntry(Body):
    entry: str
    reason: str | None = None


def entry_shape(row: ListEntry, scoped: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "entry": row.entry,
        "organization_id": row.organization_id,
        "reason": row.reason,
        "direction": row.direction,
        "list_type": row.list_type,
        "entry_type": row.entry_type,
        "created_at": wire.iso(row.created_at),
        "read_only": row.read_only,
    }
    if scoped:
        body["pod_id"] = row.pod_id
        body["inbox_id"] = row.inbox_id
    return wire.drop_none(body)


async def _scope(rt: Runtime, caller: Caller, pod_id: str | None, inbox_id: str | None) -> ListScope:
    """The list scope named by the path; organization lists need an organization key."""
    if pod_id is not None:
        caller.require_pod_access(pod_id)
        async with rt.db.read() as s:
            await get_pod(s, caller, pod_id)
        return ListScope(caller.organization_id, pod_id=pod_id)
    if inbox_id is not None:
        async with rt.db.read() as s:
            inbox = await get_inbox(s, caller, inbox_id)
        return ListScope(caller.organization_id, pod_id=inbox.pod_id, inbox_id=inbox.id)
    caller.require_org()
    return ListScope(caller.organization_id)


async def _list(
    request: Request,
    rt: Runtime,
    caller: Caller,
    direction: str,
    list_type: str,
    pod: str | None,
    inbox: str | None,
) -> dict[str, Any]:
    caller.require("list_entry_read")
    lists.check_list(direction, list_type)
    scope = await _scope(rt, caller, pod, inbox)
    limit = check_limit(query_int(request, "limit"))
    async with rt.db.read() as s:
        page = await lists.list_entries(
            s, scope, direction, list_type, limit=limit, page_token=request.query_params.get("page_token")
        )
    scoped = pod is not None or inbox is not None
    return wire.page(
        "entries", [entry_shape(e, scoped) for e in page.items], page.limit, page.next_page_token
    )


async def _create(
    request: Request,
    rt: Runtime,
    caller: Caller,
    direction: str,
    list_type: str,
    pod: str | None,
    inbox: str | None,
) -> dict[str, Any]:
    caller.require("list_entry_create")
    lists.check_list(direction, list_type)
    scope = await _scope(rt, caller, pod, inbox)
    body = parse(CreateEntry, await json_body(request))
    async with rt.db.transaction() as s:
        # Checked again in this transaction: the inbox or pod may be being deleted since _scope.
        await pin_owner(s, caller, pod_id=scope.pod_id, inbox_id=scope.inbox_id)
        row = await lists.add_entry(s, scope, direction, list_type, body.entry, body.reason)
        return entry_shape(row, pod is not None or inbox is not None)


async def _get(
    rt: Runtime,
    caller: Caller,
    direction: str,
    list_type: str,
    entry: str,
    pod: str | None,
    inbox: str | None,
) -> dict[str, Any]:
    caller.require("list_entry_read")
    lists.check_list(direction, list_type)
    scope = await _scope(rt, caller, pod, inbox)
    async with rt.db.read() as s:
        row = await lists.get_entry(s, scope, direction, list_type, entry)
    return entry_shape(row, pod is not None or inbox is not None)


async def _delete(
    rt: Runtime,
    caller: Caller,
    direction: str,
    list_type: str,
    entry: str,
    pod: str | None,
    inbox: str | None,
) -> Response:
    caller.require("list_entry_delete")
    lists.check_list(direction, list_type)
    scope = await _scope(rt, caller, pod, inbox)
    async with rt.db.transaction() as s:
        await lists.delete_entry(s, scope, direction, list_type, entry)
    return Response(status_code=204)


# Organization scope.
@router.get("/v0/lists/{direction}/{list_type}")
async def list_org(
    direction: str, list_type: str, request: Request, rt: RuntimeDep, caller: CallerDep
) -> Any:
    return await _list(request, rt, caller, direction, list_type, None, None)


@router.post("/v0/lists/{direction}/{list_type}")
async def create_org(
    direction: str, list_type: str, request: Request, rt: RuntimeDep, caller: CallerDep
) -> Any:
    return await _create(request, rt, caller, direction, list_type, None, None)


@router.get("/v0/lists/{direction}/{list_type}/{entry}")
async def get_org(direction: str, list_type: str, entry: str, rt: RuntimeDep, caller: CallerDep) -> Any:
    return await _get(rt, caller, direction, list_type, entry, None, None)


@router.delete("/v0/lists/{direction}/{list_type}/{entry}", status_code=204)
async def delete_org(
    direction: str, list_type: str, entry: str, rt: RuntimeDep, caller: CallerDep
) -> Response:
    return await _delete(rt, caller, direction, list_type, entry, None, None)


# Pod scope.
@router.get("/v0/pods/{pod_id}/lists/{direction}/{list_type}")
async def list_pod(
    pod_id: str, direction: str, list_type: str, request: Request, rt: RuntimeDep, caller: CallerDep
) -> Any:
    return await _list(request, rt, caller, direction, list_type, pod_id, None)


@router.post("/v0/pods/{pod_id}/lists/{direction}/{list_type}")
async def create_pod(
    pod_id: str, direction: str, list_type: str, request: Request, rt: RuntimeDep, caller: CallerDep
) -> Any:
    return await _create(request, rt, caller, direction, list_type, pod_id, None)


@router.get("/v0/pods/{pod_id}/lists/{direction}/{list_type}/{entry}")
async def get_pod_entry(
    pod_id: str, direction: str, list_type: str, entry: str, rt: RuntimeDep, caller: CallerDep
) -> Any:
    return await _get(rt, caller, direction, list_type, entry, pod_id, None)


@router.delete("/v0/pods/{pod_id}/lists/{direction}/{list_type}/{entry}", status_code=204)
async def delete_pod_entry(
    pod_id: str, direction: str, list_type: str, entry: str, rt: RuntimeDep, caller: CallerDep
) -> Response:
    return await _delete(rt, caller, direction, list_type, entry, pod_id, None)


# Inbox scope.
@router.get("/v0/inboxes/{inbox_id}/lists/{direction}/{list_type}")
async def list_inbox(
    inbox_id: str, direction: str, list_type: str, request: Request, rt: RuntimeDep, caller: CallerDep
) -> Any:
    return await _list(request, rt, caller, direction, list_type, None, inbox_id)


@router.post("/v0/inboxes/{inbox_id}/lists/{direction}/{list_type}")
async def create_inbox(
    inbox_id: str, direction: str, list_type: str, request: Request, rt: RuntimeDep, caller: CallerDep
) -> Any:
    return await _create(request, rt, caller, direction, list_type, None, inbox_id)


@router.get("/v0/inboxes/{inbox_id}/lists/{direction}/{list_type}/{entry}")
async def get_inbox_entry(
    inbox_id: str, direction: str, list_type: str, entry: str, rt: RuntimeDep, caller: CallerDep
) -> Any:
    return await _get(rt, caller, direction, list_type, entry, None, inbox_id)


@router.delete("/v0/inboxes/{inbox_id}/lists/{direction}/{list_type}/{entry}", status_code=204)
async def delete_inbox_entry(
    inbox_id: str, direction: str, list_type: str, entry: str, rt: RuntimeDep, caller: CallerDep
) -> Response:
    return await _delete(rt, caller, direction, list_type, entry, None, inbox_id)
