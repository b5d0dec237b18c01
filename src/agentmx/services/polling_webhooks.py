"""Polling webhooks: subscriptions an agent reads with a token instead of receiving at a URL (API.md 2.7).

Owner, event types, channels and permissions follow push webhooks (services/webhooks.py). The token
is shown once, at create, and only its SHA-256 is stored. A repeat create with the same ``client_id``
gives the existing subscription a new token; the previous one stops working.
"""

from __future__ import annotations

import secrets

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from agentmx.db.models import Event, Inbox, Pod, PollingWebhook
from agentmx.db.types import utcnow
from agentmx.errors import LimitExceeded, NotFound, Unauthorized
from agentmx.events.catalogue import check_event_types
from agentmx.ids import new_id
from agentmx.services.caller import Caller
from agentmx.services.keys import SECRET_PREFIX as API_KEY_PREFIX
from agentmx.services.keys import hash_secret
from agentmx.services.pagination import Page
from agentmx.services.validation import check_client_id, fail
from agentmx.services.webhooks import (
    Route,
    check_channels,
    list_subscriptions,
    lock_organization_rows,
    owned_by,
    owner_of,
    resolve_channels,
    serialise_creates,
    unlisted,
)

TOKEN_PREFIX = "amp_"
MAX_CHANNELS = 10  # pods plus inboxes, per subscription
MAX_PER_OWNER = 10  # per organization, pod and inbox
# PostgreSQL advisory lock (two-key form: its own key space) taken by every create in an
# organization, so two creates at once cannot both pass the per-owner limit or both insert one
# client_id. SQLite serialises writers anyway.
CREATE_LOCK = 0x706F6C6C  # "poll"


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


async def _by_client_id(session: AsyncSession, owner_scope: str, client_id: str) -> PollingWebhook | None:
    # Locked: a concurrent delete either went first (None: a new one is made) or waits for the new token.
    return await session.scalar(
        select(PollingWebhook)
        .where(PollingWebhook.owner_scope == owner_scope, PollingWebhook.client_id == client_id)
        .with_for_update(key_share=True)
        .execution_options(populate_existing=True)
    )


async def create_polling_webhook(
    session: AsyncSession,
    caller: Caller,
    route: Route,
    *,
    client_id: str,
    event_types: list[str],
    pod_ids: list[str] | None,
    inbox_ids: list[str] | None,
) -> tuple[PollingWebhook, str]:
    """The subscription and its token (the only time the token exists in clear)."""
    check_client_id(client_id)
    types = check_event_types(caller, event_types)  # 400 unknown type, 403 missing label permission
    if not types:
        raise fail("event_types", "event_types must list at least one event type")
    pod_list = check_channels(pod_ids, "pod_ids")
    inbox_list = check_channels(inbox_ids, "inbox_ids")
    if len(pod_list) + len(inbox_list) > MAX_CHANNELS:
        raise fail(
            "inbox_ids", f"a polling webhook may list at most {MAX_CHANNELS} pods and inboxes together"
        )
    await serialise_creates(session, CREATE_LOCK, caller.organization_id)
    owner = await owner_of(session, caller, route)
    owner_scope = owner.inbox_id or owner.pod_id or caller.organization_id
    token = new_token()
    now = utcnow()
    existing = await _by_client_id(session, owner_scope, client_id)
    if existing is not None:
        # The new token reads what the subscription takes: the caller must be allowed to subscribe to it.
        check_event_types(caller, existing.event_types)
        existing.token_hash = hash_secret(token)
        existing.updated_at = now
        return existing, token
    count = await session.scalar(select(func.count()).where(PollingWebhook.owner_scope == owner_scope))
    if (count or 0) >= MAX_PER_OWNER:
        raise LimitExceeded(
            f"At most {MAX_PER_OWNER} polling webhooks per organization, pod and inbox",
            fix="Delete a polling webhook you no longer read, or create again with its client_id.",
        )
    pod_list, inbox_list = await resolve_channels(session, caller, owner, pod_list, inbox_list)
    # Reads start after the organization's last event now; seq order is commit order (services/events).
    start_seq = await session.scalar(
        select(func.max(Event.seq)).where(Event.organization_id == caller.organization_id)
    )
    row = PollingWebhook(
        id=new_id("pw"),
        organization_id=caller.organization_id,
        pod_id=owner.pod_id,
        inbox_id=owner.inbox_id,
        owner_scope=owner_scope,
        event_types=types,
        pod_ids=pod_list,
        inbox_ids=inbox_list,
        client_id=client_id,
        token_hash=hash_secret(token),
        start_seq=int(start_seq or 0),
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    await session.flush()
    return row, token


async def get_polling_webhook(
    session: AsyncSession, caller: Caller, route: Route, webhook_id: str
) -> PollingWebhook:
    stmt = owned_by(
        select(PollingWebhook).where(PollingWebhook.id == webhook_id), PollingWebhook, caller, route
    )
    row = await session.scalar(stmt)
    if row is None:
        raise NotFound("Polling webhook not found")
    return row


async def list_polling_webhooks(
    session: AsyncSession,
    caller: Caller,
    route: Route,
    *,
    limit: int,
    page_token: str | None,
    ascending: bool,
) -> Page[PollingWebhook]:
    return await list_subscriptions(
        session,
        caller,
        route,
        PollingWebhook,
        "polling_webhooks",
        limit=limit,
        page_token=page_token,
        ascending=ascending,
    )


async def delete_polling_webhook(
    session: AsyncSession, caller: Caller, route: Route, webhook_id: str
) -> None:
    """Its token goes with the row: the next read with it is a 401."""
    await session.delete(await get_polling_webhook(session, caller, route, webhook_id))


async def by_token(session: AsyncSession, token: str) -> PollingWebhook:
    row = await session.scalar(select(PollingWebhook).where(PollingWebhook.token_hash == hash_secret(token)))
    if row is not None:
        return row
    if token.startswith(API_KEY_PREFIX):
        raise Unauthorized(
            "An API key cannot read polling webhook events",
            code="invalid_token_type",
            fix="Send the polling webhook's token (amp_…), returned when it was created.",
        )
    raise Unauthorized(
        "Unknown polling webhook token",
        fix="The polling webhook was deleted or its token re-issued: create it again with its client_id.",
    )


async def forget_inbox(session: AsyncSession, inbox: Inbox) -> None:
    """Inbox deletion: drop its own polling webhooks, and unlist it from the others."""
    for row in await lock_organization_rows(session, PollingWebhook, inbox.organization_id):
        await _delete_if_following_nothing(session, row, unlisted(row, inbox_id=inbox.id))
    await session.execute(delete(PollingWebhook).where(PollingWebhook.inbox_id == inbox.id))


async def forget_pod(session: AsyncSession, pod: Pod) -> None:
    """Pod deletion: unlist it (a pod with polling webhooks of its own is not deleted)."""
    for row in await lock_organization_rows(session, PollingWebhook, pod.organization_id):
        await _delete_if_following_nothing(session, row, unlisted(row, pod_id=pod.id))


async def _delete_if_following_nothing(
    session: AsyncSession, row: PollingWebhook, following_nothing: bool | None
) -> None:
    # It would read every event of its organization (or pod), and it has no "enabled" to switch off
    # as a push webhook in that state is: deleted (its token then gets 401).
    if following_nothing:
        await session.delete(row)
