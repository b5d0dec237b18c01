"""Metrics at organization (/v0/metrics), pod and inbox scope: events, usage, rates, legacy form."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from agentmx.http import wire
from agentmx.http.deps import CallerDep, RuntimeDep, query_bool, query_datetime, query_int, query_list
from agentmx.services import metrics
from agentmx.services.caller import Caller
from agentmx.services.inboxes import get_inbox
from agentmx.services.metrics import MetricScope
from agentmx.services.pods import get_pod
from agentmx.services.runtime import Runtime
from agentmx.services.validation import fail

router = APIRouter()


async def _scope(rt: Runtime, caller: Caller, pod_id: str | None, inbox_id: str | None) -> MetricScope:
    caller.require("metrics_read")
    if pod_id is not None:
        caller.require_pod_access(pod_id)
        async with rt.db.read() as s:
            await get_pod(s, caller, pod_id)
        return MetricScope(caller.organization_id, pod_id=pod_id)
    if inbox_id is not None:
        async with rt.db.read() as s:
            inbox = await get_inbox(s, caller, inbox_id)
        return MetricScope(caller.organization_id, pod_id=inbox.pod_id, inbox_id=inbox.id)
    caller.require_org()
    return MetricScope(caller.organization_id)


def _range(request: Request) -> metrics.Range:
    return metrics.check_range(
        query_datetime(request, "start"),
        query_datetime(request, "end"),
        query_int(request, "period"),
        query_int(request, "limit"),
        query_bool(request, "descending"),
    )


def _points(series: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return {k: [{**p, "timestamp": wire.iso(p["timestamp"])} for p in v] for k, v in series.items()}


async def _events(request: Request, rt: Runtime, caller: Caller, pod: str | None, inbox: str | None) -> Any:
    scope = await _scope(rt, caller, pod, inbox)
    rng = _range(request)
    async with rt.db.read() as s:
        return _points(await metrics.query_events(s, scope, query_list(request, "event_types"), rng))


async def _usage(request: Request, rt: Runtime, caller: Caller, pod: str | None, inbox: str | None) -> Any:
    scope = await _scope(rt, caller, pod, inbox)
    rng = _range(request)
    async with rt.db.read() as s:
        return _points(await metrics.query_usage(s, scope, query_list(request, "usage_types"), rng))


async def _rates(request: Request, rt: Runtime, caller: Caller, pod: str | None, inbox: str | None) -> Any:
    scope = await _scope(rt, caller, pod, inbox)
    async with rt.db.read() as s:
        series = await metrics.query_rates(
            s,
            scope,
            query_list(request, "rate_types"),
            query_datetime(request, "start"),
            query_datetime(request, "end"),
            query_int(request, "period"),
            query_int(request, "window"),
            query_int(request, "limit"),
            query_bool(request, "descending"),
        )
    return _points(series)


async def _legacy(request: Request, rt: Runtime, caller: Caller, pod: str | None, inbox: str | None) -> Any:
    scope = await _scope(rt, caller, pod, inbox)
    start = query_datetime(request, "start_timestamp")
    end = query_datetime(request, "end_timestamp")
    if start is None or end is None:
        raise fail("start_timestamp", "start_timestamp and end_timestamp are required")
    async with rt.db.read() as s:
        body = await metrics.legacy(s, scope, query_list(request, "event_types"), start, end)
    return {"message": {k: [wire.iso(t) for t in v] for k, v in body["message"].items()}}


# One handler per path and scope; the path tells the scope.
for prefix, pod_param, inbox_param in (
    ("/v0/metrics", False, False),
    ("/v0/pods/{pod_id}/metrics", True, False),
    ("/v0/inboxes/{inbox_id}/metrics", False, True),
):
    for suffix, handler in (("/events", _events), ("/usage", _usage), ("/rates", _rates), ("", _legacy)):

        def _make(
            handler: Any = handler, pod_param: bool = pod_param, inbox_param: bool = inbox_param
        ) -> Any:
            async def endpoint(request: Request, rt: RuntimeDep, caller: CallerDep) -> Any:
                params = request.path_params
                pod = params["pod_id"] if pod_param else None
                inbox = params["inbox_id"] if inbox_param else None
                return await handler(request, rt, caller, pod, inbox)

            return endpoint

        router.add_api_route(prefix + suffix, _make(), methods=["GET"], name=f"metrics{prefix}{suffix}")
