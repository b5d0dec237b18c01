"""Inboxes: addresses that send and receive, each in one pod."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import delete, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from agentmx.db import text_match
from agentmx.db.models import ApiKey, Inbox
from agentmx.db.row_locks import RowLock, get_row
from agentmx.db.types import utcnow
from agentmx.db.unique import flush_unless_taken
from agentmx.errors import AlreadyTaken, NotFound, Unprocessable
from agentmx.ids import random_username
from agentmx.mail.idn import to_ascii_domain
from agentmx.services import hooks
from agentmx.services import metadata as md
from agentmx.services.caller import Caller
from agentmx.services.pagination import Page, decode_token, encode_token, paginate
from agentmx.services.pods import default_pod, get_pod
from agentmx.services.runtime import Runtime
from agentmx.services.validation import USERNAME, check_client_id, check_domain_name, fail

UNSET: Any = object()

# Hook for custom domains: called with (session, rt, caller, pod_id, domain) for any domain
# other than the server's default; raises Unprocessable when the domain may not be used.
DomainCheck = Callable[[AsyncSession, Runtime, Caller, str, str], Awaitable[None]]


async def _no_custom_domains(
    session: AsyncSession, rt: Runtime, caller: Caller, pod_id: str, domain: str
) -> None:
    raise Unprocessable(
        f"Domain '{domain}' is not a verified domain of this organization",
        code="domain_not_verified",
        fix=f"Use the default domain '{rt.settings.domain}' or add and verify the domain first.",
    )


custom_domain_check: list[DomainCheck] = [_no_custom_domains]

# Hooks run before an inbox is deleted, to remove what hangs off it (messages, drafts, …).
inbox_cleanup: list[Callable[[AsyncSession, Inbox], Awaitable[None]]] = []


def visible(stmt: Any, caller: Caller) -> Any:
    stmt = stmt.where(Inbox.organization_id == caller.organization_id)
    if caller.pod_id:
        stmt = stmt.where(Inbox.pod_id == caller.pod_id)
    if caller.inbox_id:
        stmt = stmt.where(Inbox.id == caller.inbox_id)
    return stmt


def inbox_key(inbox_id: str) -> str:
    """Inbox ids are addresses: matched trimmed and lower-cased, a Unicode domain as its A-labels
    (the form inboxes on an IDN domain are stored under, mail/idn.py)."""
    key = inbox_id.strip().lower()
    if key.isascii():
        return key
    local, at, domain = key.rpartition("@")
    wire = to_ascii_domain(domain) if at else None
    return f"{local}@{wire}" if wire is not None else key


def inbox_is_visible(caller: Caller, organization_id: str, inbox_id: str, pod_id: str) -> bool:
    return organization_id == caller.organization_id and caller.sees_inbox(inbox_id, pod_id)


async def get_inbox(
    session: AsyncSession,
    caller: Caller,
    inbox_id: str,
    pod_id: str | None = None,
    *,
    lock: RowLock | None = None,
) -> Inbox:
    """``lock="change"``: for a change computed from the row (a metadata merge). Without it, two merges
    at once on PostgreSQL both read the old map and the later write drops the other's keys.
    ``lock="pin"``: adding a row that belongs to the inbox; ``lock="delete"``: deleting it."""
    inbox = await get_row(session, Inbox, inbox_key(inbox_id), lock)
    if (
        inbox is None
        or not inbox_is_visible(caller, inbox.organization_id, inbox.id, inbox.pod_id)
        or (pod_id is not None and inbox.pod_id != pod_id)
    ):
        raise NotFound("Inbox not found")
    return inbox


def check_display_name(value: Any) -> None:
    """It becomes the From header's phrase of every message the inbox sends: a line break or another
    control character there made each of those sends a 400 naming the headers, not this field."""
    if not isinstance(value, str) or len(value) > 256:
        raise fail("display_name", "display_name must be a string of at most 256 characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise fail("display_name", "display_name may not contain line breaks or other control characters")


async def create_inbox(
    session: AsyncSession,
    rt: Runtime,
    caller: Caller,
    *,
    pod_id: str | None,
    username: str | None,
    domain: str | None,
    display_name: str | None,
    client_id: str | None,
    status: str | None,
    metadata: Any,
) -> Inbox:
    check_client_id(client_id)
    if client_id and (existing := await _by_client_id(session, caller, client_id)):
        return existing
    # The pod is pinned so a concurrent delete_pod waits and then counts this inbox (409), or went
    # first and this is a 404 (not a foreign key error).
    if pod_id is None:
        pod_id = caller.pod_id
    if pod_id is None:
        pod_id = (await default_pod(session, caller.organization_id)).id
    else:
        await get_pod(session, caller, pod_id, lock="pin")
    domain_name = check_domain_name(domain) if domain else rt.settings.domain
    if domain_name != rt.settings.domain:
        for check in custom_domain_check:
            await check(session, rt, caller, pod_id, domain_name)
    if username is not None:
        username = username.strip().lower()
        if not USERNAME.match(username):
            raise fail("username", "username must be 1-64 characters of a-z 0-9 . _ + - (not at either end)")
        if hooks.return_path_handler(f"{username}@{domain_name}") is not None:
            # Mail to it would be taken for a delivery report (bounces+…) and never reach the inbox.
            raise fail("username", f"username '{username}' is reserved for delivery reports")
    if status not in (None, "active", "paused"):
        raise fail("status", "status must be 'active' or 'paused'")
    if display_name is not None:
        check_display_name(display_name)
    meta = md.validate_new(metadata)
    for _ in range(5):
        name = username or random_username()
        address = f"{name}@{domain_name}"
        if await session.get(Inbox, address) is None:
            break
        if username:
            raise AlreadyTaken(f"Inbox '{address}' already exists", fix="Choose another username.")
    now = utcnow()
    inbox = Inbox(
        id=address,
        organization_id=caller.organization_id,
        pod_id=pod_id,
        username=name,
        domain=domain_name,
        display_name=display_name,
        client_id=client_id,
        status=status or "active",
        metadata_=meta,
        created_at=now,
        updated_at=now,
    )
    if not await flush_unless_taken(session, inbox):
        # A request with the same client_id got there first (a retry), or the address was taken.
        existing = await _by_client_id(session, caller, client_id) if client_id else None
        if existing is None:
            raise AlreadyTaken(f"Inbox '{address}' already exists")
        return existing
    return inbox


async def _by_client_id(session: AsyncSession, caller: Caller, client_id: str) -> Inbox | None:
    """The inbox an earlier create with this client_id made. One outside the caller's scope is refused,
    not returned: a pod key naming another pod's client_id was handed that pod's inbox."""
    row = await session.scalar(
        select(Inbox).where(Inbox.organization_id == caller.organization_id, Inbox.client_id == client_id)
    )
    if row is not None and not caller.sees_inbox(row.id, row.pod_id):
        raise AlreadyTaken(f"client_id '{client_id}' is already in use", fix="Use another client_id.")
    return row


async def list_inboxes(
    session: AsyncSession,
    caller: Caller,
    *,
    pod_id: str | None,
    limit: int,
    page_token: str | None,
    ascending: bool,
) -> Page[Inbox]:
    stmt = visible(select(Inbox), caller)
    if pod_id is not None:
        await get_pod(session, caller, pod_id)
        stmt = stmt.where(Inbox.pod_id == pod_id)
    return await paginate(
        session,
        stmt,
        kind="inboxes",
        columns=[Inbox.created_at, Inbox.id],
        limit=limit,
        page_token=page_token,
        ascending=ascending,
    )


async def update_inbox(
    session: AsyncSession,
    caller: Caller,
    inbox_id: str,
    *,
    pod_id: str | None = None,
    display_name: Any = UNSET,
    status: Any = UNSET,
    metadata: Any = UNSET,
) -> Inbox:
    if display_name is UNSET and status is UNSET and metadata is UNSET:
        raise fail("body", "Provide at least one of display_name, status or metadata")
    inbox = await get_inbox(
        session, caller, inbox_id, pod_id, lock="change" if metadata is not UNSET else None
    )
    if display_name is not UNSET:
        if display_name is not None:
            check_display_name(display_name)
        inbox.display_name = display_name
    if status is not UNSET:
        if status not in ("active", "paused"):
            raise fail("status", "status must be 'active' or 'paused'")
        inbox.status = status
    if metadata is not UNSET:
        inbox.metadata_ = {} if metadata is None else md.merge(inbox.metadata_ or {}, metadata)
    inbox.updated_at = utcnow()
    await session.flush()
    return inbox


async def delete_inbox(
    session: AsyncSession, caller: Caller, inbox_id: str, pod_id: str | None = None
) -> None:
    # Locked before the cleanups: whoever adds a key, list entry or webhook for the inbox pins it
    # (pin_owner), so either it committed and the cleanups below remove its row, or it waits and
    # then finds the inbox gone. Plain DELETEs alone miss rows not yet committed.
    inbox = await get_inbox(session, caller, inbox_id, pod_id, lock="delete")
    for cleanup in inbox_cleanup:
        await cleanup(session, inbox)
    await session.execute(delete(ApiKey).where(ApiKey.inbox_id == inbox.id))
    await session.delete(inbox)


async def pin_owner(
    session: AsyncSession, caller: Caller, *, pod_id: str | None, inbox_id: str | None
) -> None:
    """In the transaction that adds a row belonging to an inbox or a pod (an API key, a list entry):
    re-read the owner pinned, so a concurrent delete of it waits for this row, or this is a 404."""
    if inbox_id is not None:
        await get_inbox(session, caller, inbox_id, lock="pin")
    elif pod_id is not None:
        await get_pod(session, caller, pod_id, lock="pin")


def _rank(inbox: Inbox, q: str, words: list[str]) -> int | None:
    """0 = exact address, 1 = every word prefixes a word, None = no match."""
    if inbox.id == q:
        return 0
    haystack = inbox.id.replace("@", " ").replace(".", " ").split()
    haystack += (inbox.display_name or "").lower().split()
    haystack.append(inbox.id)
    if all(any(h.startswith(w) for h in haystack) for w in words):
        return 1
    return None


async def search_inboxes(
    session: AsyncSession,
    caller: Caller,
    *,
    q: str,
    pod_id: str | None,
    limit: int,
    page_token: str | None,
) -> Page[Inbox]:
    q = (q or "").strip().lower()
    if not 2 <= len(q) <= 256:
        raise fail("q", "q must be 2-256 characters")
    words = q.split()
    stmt = visible(select(Inbox), caller)
    if pod_id is not None:
        await get_pod(session, caller, pod_id)
        stmt = stmt.where(Inbox.pod_id == pod_id)
    for word in words:
        text = word.replace("%", "").replace("_", "")
        stmt = stmt.where(
            or_(text_match.contains(Inbox.id, text), text_match.contains(Inbox.display_name, text))
        )
    candidates = (await session.scalars(stmt.order_by(Inbox.created_at.desc()).limit(5000))).all()
    ranked = sorted(
        ((rank, i) for i, inbox in enumerate(candidates) if (rank := _rank(inbox, q, words)) is not None)
    )
    hits = [candidates[i] for _, i in ranked]
    offset = decode_token("inbox_search:" + q, page_token, [int])[0] if page_token else 0
    page = hits[offset : offset + limit]
    token = encode_token("inbox_search:" + q, [offset + limit]) if offset + limit < len(hits) else None
    return Page(page, limit, token)
