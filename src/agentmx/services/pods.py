"""Pods: the tenants inside an organization."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from agentmx.db.models import ApiKey, Inbox, Pod
from agentmx.db.row_locks import RowLock, get_row
from agentmx.db.types import utcnow
from agentmx.db.unique import flush_unless_taken
from agentmx.errors import AlreadyTaken, Conflict, NotFound, TemporaryFailure
from agentmx.ids import new_uuid
from agentmx.services.caller import Caller
from agentmx.services.pagination import Page, paginate
from agentmx.services.validation import check_client_id, fail

# Other features register "does this pod still own X?" checks here (domains, for instance).
POD_DEPENDENTS: list[tuple[str, Any]] = [("inboxes", Inbox.pod_id)]

# Run by delete_pod under the pod's delete lock, to remove rows that only name the pod (its list
# entries, its place in webhooks' pod_ids): no foreign key does it, and they would outlive it.
pod_cleanup: list[Callable[[AsyncSession, Pod], Awaitable[None]]] = []


async def get_pod(session: AsyncSession, caller: Caller, pod_id: str, *, lock: RowLock | None = None) -> Pod:
    pod = await get_row(session, Pod, pod_id, lock)
    if pod is None or not pod_is_visible(caller, pod.organization_id, pod.id):
        raise NotFound("Pod not found")
    return pod


def pod_is_visible(caller: Caller, organization_id: str, pod_id: str) -> bool:
    return organization_id == caller.organization_id and caller.sees_pod(pod_id)


async def default_pod(session: AsyncSession, organization_id: str) -> Pod:
    """Pinned (FOR KEY SHARE): the caller puts an inbox in it, which a concurrent delete must see."""
    for _ in range(3):
        pod = await session.scalar(
            select(Pod)
            .where(Pod.organization_id == organization_id, Pod.is_default.is_(True))
            .with_for_update(read=True, key_share=True)
            .execution_options(populate_existing=True)
        )
        if pod is not None:
            return pod
        # It was deleted: made again. A request doing the same at once is refused by the unique
        # index (uq_pods_org_default) after the first commits; it then pins the first one's pod.
        pod = Pod(id=new_uuid(), organization_id=organization_id, name="Default Pod", is_default=True)
        if await flush_unless_taken(session, pod):
            return pod
    # Only if each new default pod was deleted again between its commit and this re-read.
    raise TemporaryFailure("The default pod is being replaced", fix="Retry the request.")


async def create_pod(session: AsyncSession, caller: Caller, name: str | None, client_id: str | None) -> Pod:
    check_client_id(client_id)
    if name is not None and not (1 <= len(name) <= 256):
        raise fail("name", "name must be 1-256 characters")
    if client_id and (existing := await _by_client_id(session, caller.organization_id, client_id)):
        return existing
    now = utcnow()
    pod_id = new_uuid()
    pod = Pod(
        id=pod_id,
        organization_id=caller.organization_id,
        name=name or f"pod-{pod_id[:8]}",
        client_id=client_id,
        created_at=now,
        updated_at=now,
    )
    if not await flush_unless_taken(session, pod):
        existing = await _by_client_id(session, caller.organization_id, client_id) if client_id else None
        if existing is None:
            raise AlreadyTaken("A pod with this client_id already exists")
        return existing
    return pod


async def _by_client_id(session: AsyncSession, organization_id: str, client_id: str) -> Pod | None:
    return await session.scalar(
        select(Pod).where(Pod.organization_id == organization_id, Pod.client_id == client_id)
    )


async def list_pods(
    session: AsyncSession, caller: Caller, *, limit: int, page_token: str | None, ascending: bool
) -> Page[Pod]:
    stmt = select(Pod).where(Pod.organization_id == caller.organization_id)
    if caller.pod_id:
        stmt = stmt.where(Pod.id == caller.pod_id)
    return await paginate(
        session,
        stmt,
        kind="pods",
        columns=[Pod.created_at, Pod.id],
        limit=limit,
        page_token=page_token,
        ascending=ascending,
    )


async def delete_pod(session: AsyncSession, caller: Caller, pod_id: str) -> None:
    # Locked first: a creator of an inbox, webhook, domain, key or list entry in this pod pins it, so
    # either it commits before the count and cleanups below (409, or its row is removed), or it waits
    # and then finds the pod gone (404).
    pod = await get_pod(session, caller, pod_id, lock="delete")
    for label, pod_column in POD_DEPENDENTS:
        count = await session.scalar(select(func.count()).where(pod_column == pod.id))
        if count:
            raise Conflict(
                f"Pod still has {label}", code="cannot_delete", fix=f"Delete the pod's {label} first."
            )
    for cleanup in pod_cleanup:
        await cleanup(session, pod)
    # A pod key has authority over this pod only: it goes with it (inbox keys went with their inboxes).
    await session.execute(delete(ApiKey).where(ApiKey.pod_id == pod.id))
    await session.delete(pod)
