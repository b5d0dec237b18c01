"""Custom domains at organization scope (/v0/domains) and pod scope (/v0/pods/{pod_id}/domains)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import PlainTextResponse

from agentmx.domains import wire as domain_wire
from agentmx.http import wire
from agentmx.http.bodies import Body, given, parse
from agentmx.http.deps import CallerDep, RuntimeDep, json_body, query_bool, query_int
from agentmx.services import domains
from agentmx.services.caller import Caller
from agentmx.services.pagination import check_limit
from agentmx.services.runtime import Runtime
from agentmx.services.validation import check_domain_name

router = APIRouter()


class CreateDomain(Body):
    domain: str
    allow_conflicting_provider: bool | None = None
    feedback_enabled: bool | None = None
    inbound_enabled: bool | None = None
    subdomains_enabled: bool | None = None
    tracking_enabled: bool | None = None
    client_id: str | None = None


class UpdateDomain(Body):
    feedback_enabled: bool | None = None
    inbound_enabled: bool | None = None
    subdomains_enabled: bool | None = None
    tracking_enabled: bool | None = None


def _pod_scope(caller: Caller, pod_id: str | None) -> None:
    if pod_id is not None:
        caller.require_pod_access(pod_id)


async def _list(request: Request, rt: Runtime, caller: Caller, pod_id: str | None) -> dict[str, Any]:
    caller.require("domain_read")
    _pod_scope(caller, pod_id)
    limit = check_limit(query_int(request, "limit"))
    async with rt.db.read() as s:
        page = await domains.list_domains(
            s,
            caller,
            pod_id=pod_id,
            limit=limit,
            page_token=request.query_params.get("page_token"),
            ascending=query_bool(request, "ascending"),
        )
    items = [domain_wire.domain_item(d) for d in page.items]
    return wire.page("domains", items, page.limit, page.next_page_token)


async def _create(request: Request, rt: Runtime, caller: Caller, pod_id: str | None) -> dict[str, Any]:
    caller.require("domain_create")
    _pod_scope(caller, pod_id)
    body = parse(CreateDomain, await json_body(request))
    name = check_domain_name(body.domain)
    await domains.load_name_rules()
    conflicting = None
    if body.inbound_enabled is not False and not body.allow_conflicting_provider:
        conflicting = await domains.conflicting_provider(rt, name)
    async with rt.db.transaction() as s:
        row = await domains.create_domain(
            s,
            rt,
            caller,
            pod_id=pod_id,
            name=name,
            feedback_enabled=body.feedback_enabled,
            inbound_enabled=body.inbound_enabled,
            subdomains_enabled=body.subdomains_enabled,
            tracking_enabled=body.tracking_enabled,
            client_id=body.client_id,
            conflicting=conflicting,
        )
        return domain_wire.domain(row, rt.settings)


async def _get(rt: Runtime, caller: Caller, domain_id: str, pod_id: str | None) -> dict[str, Any]:
    caller.require("domain_read")
    _pod_scope(caller, pod_id)
    async with rt.db.read() as s:
        row = await domains.get_domain(s, caller, domain_id, pod_id)
        return domain_wire.domain(row, rt.settings)


async def _zone_file(rt: Runtime, caller: Caller, domain_id: str, pod_id: str | None) -> Response:
    caller.require("domain_read")
    _pod_scope(caller, pod_id)
    async with rt.db.read() as s:
        text = await domains.zone_file(s, rt, caller, domain_id, pod_id)
    return PlainTextResponse(text)


async def _update(
    request: Request, rt: Runtime, caller: Caller, domain_id: str, pod_id: str | None
) -> dict[str, Any]:
    caller.require("domain_update")
    _pod_scope(caller, pod_id)
    body = parse(UpdateDomain, await json_body(request))
    flags: dict[str, bool] = {}
    for name in domains.FLAGS:
        value = getattr(body, name)
        if given(body, name) and value is not None:
            flags[name] = value
    async with rt.db.transaction() as s:
        row = await domains.update_domain(s, rt, caller, domain_id, pod_id=pod_id, flags=flags)
        return domain_wire.domain(row, rt.settings)


async def _delete(rt: Runtime, caller: Caller, domain_id: str, pod_id: str | None) -> Response:
    caller.require("domain_delete")
    _pod_scope(caller, pod_id)
    async with rt.db.transaction() as s:
        await domains.delete_domain(s, caller, domain_id, pod_id)
    return Response(status_code=204)


async def _verify(rt: Runtime, caller: Caller, domain_id: str, pod_id: str | None) -> Response:
    caller.require("domain_update")
    _pod_scope(caller, pod_id)
    await domains.verify_domain(rt, caller, domain_id, pod_id)
    return Response(status_code=204)


# Organization scope. Fixed sub-paths are declared before the bare /{domain_id}.
@router.get("/v0/domains")
async def list_domains(request: Request, rt: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    return await _list(request, rt, caller, None)


@router.post("/v0/domains")
async def create_domain(request: Request, rt: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    return await _create(request, rt, caller, None)


@router.get("/v0/domains/{domain_id}/zone-file")
async def get_zone_file(domain_id: str, rt: RuntimeDep, caller: CallerDep) -> Response:
    return await _zone_file(rt, caller, domain_id, None)


@router.post("/v0/domains/{domain_id}/verify", status_code=204)
async def verify_domain(domain_id: str, rt: RuntimeDep, caller: CallerDep) -> Response:
    return await _verify(rt, caller, domain_id, None)


@router.get("/v0/domains/{domain_id}/setup-link")
async def get_setup_link(domain_id: str, rt: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    """One-click Domain Connect setup is not offered: publish the records or import the zone file."""
    caller.require("domain_read")
    async with rt.db.read() as s:
        await domains.get_domain(s, caller, domain_id)
    return {"supported": False}


@router.get("/v0/domains/{domain_id}")
async def get_domain(domain_id: str, rt: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    return await _get(rt, caller, domain_id, None)


@router.patch("/v0/domains/{domain_id}")
async def update_domain(
    domain_id: str, request: Request, rt: RuntimeDep, caller: CallerDep
) -> dict[str, Any]:
    return await _update(request, rt, caller, domain_id, None)


@router.delete("/v0/domains/{domain_id}", status_code=204)
async def delete_domain(domain_id: str, rt: RuntimeDep, caller: CallerDep) -> Response:
    return await _delete(rt, caller, domain_id, None)


# Pod scope: only the pod's own domains (shared ones are managed at organization scope).
@router.get("/v0/pods/{pod_id}/domains")
async def list_pod_domains(
    pod_id: str, request: Request, rt: RuntimeDep, caller: CallerDep
) -> dict[str, Any]:
    return await _list(request, rt, caller, pod_id)


@router.post("/v0/pods/{pod_id}/domains")
async def create_pod_domain(
    pod_id: str, request: Request, rt: RuntimeDep, caller: CallerDep
) -> dict[str, Any]:
    return await _create(request, rt, caller, pod_id)


@router.get("/v0/pods/{pod_id}/domains/{domain_id}/zone-file")
async def get_pod_zone_file(pod_id: str, domain_id: str, rt: RuntimeDep, caller: CallerDep) -> Response:
    return await _zone_file(rt, caller, domain_id, pod_id)


@router.post("/v0/pods/{pod_id}/domains/{domain_id}/verify", status_code=204)
async def verify_pod_domain(pod_id: str, domain_id: str, rt: RuntimeDep, caller: CallerDep) -> Response:
    return await _verify(rt, caller, domain_id, pod_id)


@router.get("/v0/pods/{pod_id}/domains/{domain_id}")
async def get_pod_domain(pod_id: str, domain_id: str, rt: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    return await _get(rt, caller, domain_id, pod_id)


@router.patch("/v0/pods/{pod_id}/domains/{domain_id}")
async def update_pod_domain(
    pod_id: str, domain_id: str, request: Request, rt: RuntimeDep, caller: CallerDep
) -> dict[str, Any]:
    return await _update(request, rt, caller, domain_id, pod_id)


@router.delete("/v0/pods/{pod_id}/domains/{domain_id}", status_code=204)
async def delete_pod_domain(pod_id: str, domain_id: str, rt: RuntimeDep, caller: CallerDep) -> Response:
    return await _delete(rt, caller, domain_id, pod_id)
