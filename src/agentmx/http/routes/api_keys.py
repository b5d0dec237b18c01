"""API keys at organization (/v0/api-keys), pod and inbox scope."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request, Response

from agentmx.db.models import ApiKey
from agentmx.errors import Unprocessable
from agentmx.http import wire
from agentmx.http.bodies import Body, given, parse
from agentmx.http.deps import CallerDep, RuntimeDep, json_body, query_bool, query_int
from agentmx.services import api_keys, cache_notify
from agentmx.services.api_keys import UNSET, Scope
from agentmx.services.caller import Caller
from agentmx.services.inboxes import get_inbox, pin_owner
from agentmx.services.pagination import check_limit
from agentmx.services.pods import get_pod
from agentmx.services.runtime import Runtime
from agentmx.services.validation import fail, utc_time

router = APIRouter()


class CreateKey(Body):
    name: str | None = None
    permissions: dict[str, Any] | None = None
    expires_at: str | None = None
    public_key: Any = None  # AgentID public-key registration: not supported here


class UpdateKey(Body):
    name: str | None = None
    permissions: dict[str, Any] | None = None


def bearer(row: ApiKey) -> dict[str, Any]:
    return wire.drop_none(
        {
            "type": "bearer",
            "api_key_id": row.id,
            "prefix": row.prefix,
            "name": row.name,
            "pod_id": row.pod_id,
            "inbox_id": row.inbox_id,
            "used_at": wire.iso(row.used_at),
            "permissions": row.permissions,
            "created_at": wire.iso(row.created_at),
            "updated_at": wire.iso(row.updated_at),
            "expires_at": wire.iso(row.expires_at),
        }
    )


def _parse_expiry(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return utc_time(value)
    except ValueError as exc:
        raise fail("expires_at", "expires_at must be an ISO-8601 datetime") from exc


async def _scope(rt: Runtime, caller: Caller, pod_id: str | None, inbox_id: str | None) -> Scope | None:
    """The scope named by the path; None on /v0/api-keys. Out of the caller's scope is 404."""
    if pod_id is not None:
        caller.require_pod_access(pod_id)
        async with rt.db.read() as s:
            await get_pod(s, caller, pod_id)
        return Scope(pod_id=pod_id)
    if inbox_id is not None:
        async with rt.db.read() as s:
            inbox = await get_inbox(s, caller, inbox_id)
        return Scope(pod_id=inbox.pod_id, inbox_id=inbox.id)
    return None


async def _list(
    request: Request, rt: Runtime, caller: Caller, pod_id: str | None = None, inbox_id: str | None = None
) -> dict[str, Any]:
    caller.require("api_key_read")
    scope = await _scope(rt, caller, pod_id, inbox_id)
    kind = request.query_params.get("type")
    if kind not in (None, "bearer", "public_key"):
        raise fail("type", "type must be 'bearer' or 'public_key'")
    limit = check_limit(query_int(request, "limit"))
    ascending = query_bool(request, "ascending")
    if kind == "public_key":  # public-key credentials (AgentID) are not implemented: none exist
        return {"count": 0, "api_keys": []}
    async with rt.db.read() as s:
        page = await api_keys.list_keys(
            s,
            caller,
            scope,
            limit=limit,
            page_token=request.query_params.get("page_token"),
            ascending=ascending,
        )
    return wire.drop_none(
        {
            "count": len(page.items),
            "next_page_token": page.next_page_token,
            "api_keys": [bearer(k) for k in page.items],
        }
    )


async def _create(
    request: Request, rt: Runtime, caller: Caller, pod_id: str | None = None, inbox_id: str | None = None
) -> dict[str, Any]:
    caller.require("api_key_create")
    scope = await _scope(rt, caller, pod_id, inbox_id) or Scope(
        pod_id=caller.pod_id, inbox_id=caller.inbox_id
    )
    body = parse(CreateKey, await json_body(request))
    if body.public_key is not None:
        raise Unprocessable(
            "Public-key credentials are not supported",
            fix="Create a bearer key: omit public_key.",
        )
    async with rt.db.transaction() as s:
        # Checked again in this transaction: the inbox or pod may be being deleted since _scope.
        await pin_owner(s, caller, pod_id=scope.pod_id, inbox_id=scope.inbox_id)
        row, secret = await api_keys.create_key(
            s,
            caller,
            scope,
            name=body.name,
            permissions=body.permissions,
            expires_at=_parse_expiry(body.expires_at),
        )
        return wire.drop_none(
            {
                "api_key_id": row.id,
                "api_key": secret,
                "prefix": row.prefix,
                "name": row.name,
                "pod_id": row.pod_id,
                "inbox_id": row.inbox_id,
                "permissions": row.permissions,
                "created_at": wire.iso(row.created_at),
                "expires_at": wire.iso(row.expires_at),
            }
        )


async def _update(
    request: Request,
    rt: Runtime,
    caller: Caller,
    key_id: str,
    pod_id: str | None = None,
    inbox_id: str | None = None,
) -> dict[str, Any]:
    caller.require("api_key_update")
    scope = await _scope(rt, caller, pod_id, inbox_id)
    body = parse(UpdateKey, await json_body(request))
    async with rt.db.transaction() as s:
        await cache_notify.keys_changed(s, rt)  # new permissions apply to the next request, in every process
        row = await api_keys.update_key(
            s,
            caller,
            key_id,
            scope,
            name=body.name if given(body, "name") else UNSET,
            permissions=body.permissions if given(body, "permissions") else UNSET,
        )
        return bearer(row)


async def _delete(
    rt: Runtime, caller: Caller, key_id: str, pod_id: str | None = None, inbox_id: str | None = None
) -> Response:
    caller.require("api_key_delete")
    scope = await _scope(rt, caller, pod_id, inbox_id)
    async with rt.db.transaction() as s:
        await cache_notify.keys_changed(s, rt)  # a deleted key stops working at once, in every process
        await api_keys.delete_key(s, caller, key_id, scope)
    return Response(status_code=204)


# Organization scope.
@router.get("/v0/api-keys")
async def list_keys(request: Request, rt: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    return await _list(request, rt, caller)


@router.post("/v0/api-keys")
async def create_key(request: Request, rt: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    return await _create(request, rt, caller)


@router.get("/v0/api-keys/{api_key_id}")
async def get_key(api_key_id: str, rt: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    caller.require("api_key_read")
    async with rt.db.read() as s:
        return bearer(await api_keys.get_key(s, caller, api_key_id))


@router.patch("/v0/api-keys/{api_key_id}")
async def update_key(api_key_id: str, request: Request, rt: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    return await _update(request, rt, caller, api_key_id)


@router.delete("/v0/api-keys/{api_key_id}", status_code=204)
async def delete_key(api_key_id: str, rt: RuntimeDep, caller: CallerDep) -> Response:
    return await _delete(rt, caller, api_key_id)


# Pod scope.
@router.get("/v0/pods/{pod_id}/api-keys")
async def list_pod_keys(pod_id: str, request: Request, rt: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    return await _list(request, rt, caller, pod_id=pod_id)


@router.post("/v0/pods/{pod_id}/api-keys")
async def create_pod_key(pod_id: str, request: Request, rt: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    return await _create(request, rt, caller, pod_id=pod_id)


@router.patch("/v0/pods/{pod_id}/api-keys/{api_key_id}")
async def update_pod_key(
    pod_id: str, api_key_id: str, request: Request, rt: RuntimeDep, caller: CallerDep
) -> dict[str, Any]:
    return await _update(request, rt, caller, api_key_id, pod_id=pod_id)


@router.delete("/v0/pods/{pod_id}/api-keys/{api_key_id}", status_code=204)
async def delete_pod_key(pod_id: str, api_key_id: str, rt: RuntimeDep, caller: CallerDep) -> Response:
    return await _delete(rt, caller, api_key_id, pod_id=pod_id)


# Inbox scope.
@router.get("/v0/inboxes/{inbox_id}/api-keys")
async def list_inbox_keys(
    inbox_id: str, request: Request, rt: RuntimeDep, caller: CallerDep
) -> dict[str, Any]:
    return await _list(request, rt, caller, inbox_id=inbox_id)


@router.post("/v0/inboxes/{inbox_id}/api-keys")
async def create_inbox_key(
    inbox_id: str, request: Request, rt: RuntimeDep, caller: CallerDep
) -> dict[str, Any]:
    return await _create(request, rt, caller, inbox_id=inbox_id)


@router.patch("/v0/inboxes/{inbox_id}/api-keys/{api_key_id}")
async def update_inbox_key(
    inbox_id: str, api_key_id: str, request: Request, rt: RuntimeDep, caller: CallerDep
) -> dict[str, Any]:
    return await _update(request, rt, caller, api_key_id, inbox_id=inbox_id)


@router.delete("/v0/inboxes/{inbox_id}/api-keys/{api_key_id}", status_code=204)
async def delete_inbox_key(inbox_id: str, api_key_id: str, rt: RuntimeDep, caller: CallerDep) -> Response:
    return await _delete(rt, caller, api_key_id, inbox_id=inbox_id)
