from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlalchemy import func, select

from agentmx.db.models import Inbox, Organization
from agentmx.errors import NotFound
from agentmx.http.deps import CallerDep, RuntimeDep
from agentmx.http.wire import drop_none, iso

router = APIRouter()

# Features add counters here, e.g. ("domain_count", <async fn(session, org_id) -> int>).
extra_counts: list[Any] = []


@router.get("/v0/organizations")
async def get_organization(rt: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    caller.require_org()
    async with rt.db.read() as s:
        org = await s.get(Organization, caller.organization_id)
        if org is None:
            raise NotFound("Organization not found")
        inboxes = await s.scalar(
            select(func.count()).select_from(Inbox).where(Inbox.organization_id == org.id)
        )
        body: dict[str, Any] = {
            "organization_id": org.id,
            "inbox_count": inboxes or 0,
            "domain_count": 0,
            "updated_at": iso(org.updated_at),
            "created_at": iso(org.created_at),
        }
        for name, count in extra_counts:
            body[name] = await count(s, org.id)
    return body


@router.get("/v0/auth/me")
async def me(caller: CallerDep) -> dict[str, Any]:
    scope_id = caller.inbox_id or caller.pod_id or caller.organization_id
    return drop_none(
        {
            "scope_type": caller.scope_type,
            "scope_id": scope_id,
            "organization_id": caller.organization_id,
            "pod_id": caller.pod_id,
            "inbox_id": caller.inbox_id,
            "api_key_id": caller.api_key_id,
        }
    )
