"""GET /v0/inboxes/{inbox_id}/events: the inbox's label change log (API.md 2.11)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from agentmx.db.models import InboxEvent
from agentmx.http import wire
from agentmx.http.deps import CallerDep, RuntimeDep, query_bool, query_int
from agentmx.services import inbox_events
from agentmx.services.pagination import check_limit

router = APIRouter()


def inbox_event(row: InboxEvent) -> dict[str, Any]:
    return {
        "organization_id": row.organization_id,
        "pod_id": row.pod_id,
        "inbox_id": row.inbox_id,
        "event_id": str(row.id),
        "event_type": row.event_type,
        "message_id": row.message_id,
        "label": row.label,
        "event_at": wire.iso(row.event_at),
        "created_at": wire.iso(row.created_at),
    }


@router.get("/v0/inboxes/{inbox_id}/events")
async def list_inbox_events(
    inbox_id: str, request: Request, rt: RuntimeDep, caller: CallerDep
) -> dict[str, Any]:
    caller.require("message_read")
    limit = check_limit(query_int(request, "limit"))
    async with rt.db.read() as s:
        page = await inbox_events.list_inbox_events(
            s,
            caller,
            inbox_id,
            limit=limit,
            page_token=request.query_params.get("page_token"),
            ascending=query_bool(request, "ascending"),
        )
    return wire.page("events", [inbox_event(e) for e in page.items], page.limit, page.next_page_token)
