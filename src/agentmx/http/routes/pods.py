from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from agentmx.http import wire
from agentmx.http.bodies import Body, parse
from agentmx.http.deps import CallerDep, RuntimeDep, json_body, query_bool, query_int
from agentmx.services import cache_notify, pods
from agentmx.services.pagination import check_limit

router = APIRouter(prefix="/v0/pods")


class CreatePod(Body):
    name: str | None = None
    client_id: str | None = None


@router.get("")
async def list_pods(request: Request, rt: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    caller.require("pod_read")
    if caller.inbox_id:
        caller.require_pod_access("")
    limit = check_limit(query_int(request, "limit"))
    async with rt.db.read() as s:
        page = await pods.list_pods(
            s,
            caller,
            limit=limit,
            page_token=request.query_params.get("page_token"),
            ascending=query_bool(request, "ascending"),
        )
    return wire.page("pods", [wire.pod(p) for p in page.items], page.limit, page.next_page_token)


@router.post("")
async def create_pod(request: Request, rt: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    caller.require_org()
    caller.require("pod_create")
    body = parse(CreatePod, await json_body(request))
    async with rt.db.transaction() as s:
        pod = await pods.create_pod(s, caller, body.name, body.client_id)
    return wire.pod(pod)


@router.get("/{pod_id}")
async def get_pod(pod_id: str, rt: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    caller.require("pod_read")
    caller.require_pod_access(pod_id)
    async with rt.db.read() as s:
        pod = await pods.get_pod(s, caller, pod_id)
    return wire.pod(pod)


@router.delete("/{pod_id}", status_code=204)
async def delete_pod(pod_id: str, rt: RuntimeDep, caller: CallerDep) -> Response:
    caller.require_org()
    caller.require("pod_delete")
    async with rt.db.transaction() as s:
        await cache_notify.keys_changed(s, rt)  # the pod's keys are deleted with it
        await pods.delete_pod(s, caller, pod_id)
    return Response(status_code=204)
