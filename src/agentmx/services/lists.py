"""Allow/block lists: entries at organization, pod or inbox scope, and the decision they make.

The most specific scope with a matching entry decides (block beats allow within a scope). With
no match anywhere, an active allow list (any allow entry for that direction in scope) refuses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from agentmx.db.models import ListEntry, Message
from agentmx.db.types import utcnow
from agentmx.db.unique import flush_unless_taken
from agentmx.errors import AlreadyTaken, Forbidden, MessageRejected, NotFound, ValidationFailed
from agentmx.ids import new_id
from agentmx.mail.compose import MAX_ADDRESS, ascii_domain, bare_address
from agentmx.mail.idn import idna2003_spelling
from agentmx.services import hooks
from agentmx.services.inboxes import inbox_cleanup
from agentmx.services.ingest_cache import MISSING
from agentmx.services.pagination import Page, paginate
from agentmx.services.pods import pod_cleanup
from agentmx.services.validation import DOMAIN, fail

if TYPE_CHECKING:
    from agentmx.db.models import Inbox, Pod
    from agentmx.services.runtime import Runtime

DIRECTIONS = ("send", "receive", "reply")
LIST_TYPES = ("allow", "block")


@dataclass(frozen=True)
class ListScope:
    organization_id: str
    pod_id: str | None = None
    inbox_id: str | None = None

    @property
    def scope_id(self) -> str:
        return self.inbox_id or self.pod_id or self.organization_id


def check_list(direction: str, list_type: str) -> None:
    if direction not in DIRECTIONS:
        raise fail("direction", "direction must be one of send, receive, reply")
    if list_type not in LIST_TYPES:
        raise fail("type", "type must be allow or block")


def _key(value: str) -> str:
    """An address or domain as entries are stored and compared: lower case, its domain in the ASCII
    (IDNA) form mail carries on the wire, so ``bücher.example`` and ``xn--bcher-kva.example`` are one."""
    local, at, domain = value.strip().lower().rstrip(".").rpartition("@")
    if not domain.isascii():
        domain = ascii_domain(domain) or domain
    return f"{local}{at}{domain}"


def normalize_entry(raw: str) -> tuple[str, str]:
    """(entry, entry_type): an address contains @, anything else must be a domain name."""
    entry = _key(raw)
    local, at, domain = entry.rpartition("@")
    if len(entry) > MAX_ADDRESS:  # no address is longer (RFC 5321), and PostgreSQL's index refuses far longer
        raise fail("entry", f"an entry is at most {MAX_ADDRESS} characters")
    if at:
        if not local or not DOMAIN.match(domain) or any(ch.isspace() or ch in "@<>" for ch in local):
            raise fail("entry", f"'{raw}' is not an email address or domain")
        return entry, "email"
    if not DOMAIN.match(entry):
        raise fail("entry", f"'{raw}' is not an email address or domain")
    return entry, "domain"


def candidates(address: str) -> list[str]:
    """Entries that match an address (bare, or with a display name): itself, its domain, and each
    parent domain."""
    address = _key(bare_address(address) or address)
    _, _, domain = address.rpartition("@")
    out = [address] if "@" in address else []
    labels = domain.split(".")
    out.extend(".".join(labels[i:]) for i in range(len(labels) - 1))
    return out


def legacy_candidates(address: str) -> list[str]:
    """``candidates`` under the IDNA 2003 spelling of the address's domain, if it has another: builds
    before the IDNA 2008 codec stored an entry typed as ``faß.de`` as ``fass.de``. That spelling is lossy
    (``fass.de`` is a domain too), so such rows cannot be rewritten; block entries match it instead."""
    local, at, domain = _key(bare_address(address) or address).rpartition("@")
    old = idna2003_spelling(domain)
    return candidates(f"{local}{at}{old}") if old else []


def _blocks_old_spelling(row: ListEntry) -> bool:
    """Whether ``row`` applies to mail whose domain only its IDNA 2003 spelling matches: block entries
    typed by people. Not allow entries (one must not admit a lookalike: they fail closed), nor
    suppressions (those builds sent to ``fass.de`` in RCPT TO: the bounce was of that address)."""
    return row.list_type == "block" and not row.read_only


async def list_entries(
    session: AsyncSession,
    scope: ListScope,
    direction: str,
    list_type: str,
    *,
    limit: int,
    page_token: str | None,
) -> Page[ListEntry]:
    stmt = select(ListEntry).where(
        ListEntry.scope_id == scope.scope_id,
        ListEntry.direction == direction,
        ListEntry.list_type == list_type,
    )
    return await paginate(
        session,
        stmt,
        kind=f"lists:{direction}:{list_type}",
        columns=[ListEntry.entry, ListEntry.id],
        limit=limit,
        page_token=page_token,
        ascending=True,
    )


async def _find(
    session: AsyncSession, scope: ListScope, direction: str, list_type: str, entry: str
) -> ListEntry | None:
    return await session.scalar(
        select(ListEntry).where(
            ListEntry.scope_id == scope.scope_id,
            ListEntry.direction == direction,
            ListEntry.list_type == list_type,
            ListEntry.entry == entry,
        )
    )


async def get_entry(
    session: AsyncSession, scope: ListScope, direction: str, list_type: str, raw: str
) -> ListEntry:
    entry = await _find(session, scope, direction, list_type, _key(raw))
    if entry is None:
        raise NotFound("List entry not found")
    return entry


async def add_entry(
    session: AsyncSession,
    scope: ListScope,
    direction: str,
    list_type: str,
    raw: str,
    reason: str | None,
    *,
    read_only: bool = False,
) -> ListEntry:
    """Add an entry; adding one that exists returns it (with the new reason, if any)."""
    entry, entry_type = normalize_entry(raw)
    existing = await _find(session, scope, direction, list_type, entry)
    if existing is not None:
        if read_only and not existing.read_only:  # a bounce or complaint on an address blocked by hand
            existing.read_only = True
            existing.reason = reason
        elif reason is not None and not existing.read_only:
            existing.reason = reason
        return existing
    row = ListEntry(
        id=new_id("le"),
        organization_id=scope.organization_id,
        pod_id=scope.pod_id,
        inbox_id=scope.inbox_id,
        scope_id=scope.scope_id,
        direction=direction,
        list_type=list_type,
        entry=entry,
        entry_type=entry_type,
        reason=reason,
        read_only=read_only,
        created_at=utcnow(),
    )
    if not await flush_unless_taken(session, row):  # a concurrent add won the race: theirs is the entry
        again = await _find(session, scope, direction, list_type, entry)
        if again is None:
            raise AlreadyTaken(f"'{entry}' is already on this list")
        return again
    return row


async def delete_entry(
    session: AsyncSession, scope: ListScope, direction: str, list_type: str, raw: str
) -> None:
    entry = await get_entry(session, scope, direction, list_type, raw)
    if entry.read_only:
        raise Forbidden(
            "Forbidden",
            code="forbidden",
            fix="This entry was added by the system (bounce or complaint) and is read-only.",
        )
    await session.delete(entry)
    await session.flush()


def _scopes_key(organization_id: str, direction: str) -> tuple[str, str, str]:
    return ("list-scopes", organization_id, direction)


def _known_without_entries(rt: Runtime, scopes: set[str], organization_id: str, direction: str) -> bool:
    """Whether the ingest cache says none of ``scopes`` holds an entry for ``direction``."""
    cached = rt.ingest_cache.get(_scopes_key(organization_id, direction))
    return cached is not MISSING and not scopes & cached


async def scopes_with_entries(
    session: AsyncSession, rt: Runtime, organization_id: str, direction: str
) -> set[str]:
    """Scope ids of the organization that hold any entry for ``direction`` (cached briefly).

    Most scopes have no list at all: then no mail needs an entry lookup.
    """
    key = _scopes_key(organization_id, direction)
    cached = rt.ingest_cache.get(key)
    if cached is not MISSING:
        return cast(set[str], cached)
    generation = rt.ingest_cache.generation
    rows = await session.scalars(
        select(ListEntry.scope_id)
        .where(ListEntry.organization_id == organization_id, ListEntry.direction == direction)
        .distinct()
    )
    found = set(rows.all())
    rt.ingest_cache.put(key, found, generation)
    return found


async def refuses(
    session: AsyncSession, inbox: Inbox, direction: str, addresses: list[str], rt: Runtime | None = None
) -> bool:
    """True when the lists of ``inbox``'s scopes refuse these addresses for ``direction``.

    With ``rt``, scopes known (from its ingest cache) to hold no entry are not queried.
    """
    order = [inbox.id, inbox.pod_id, inbox.organization_id]
    if rt is not None and not set(order) & await scopes_with_entries(
        session, rt, inbox.organization_id, direction
    ):
        return False
    wanted = {c for a in addresses if a for c in candidates(a)}
    legacy = {c for a in addresses if a for c in legacy_candidates(a)} - wanted
    scoped = ListEntry.organization_id == inbox.organization_id, ListEntry.scope_id.in_(order)
    if wanted:
        rows = (
            await session.scalars(
                select(ListEntry).where(
                    *scoped, ListEntry.direction == direction, ListEntry.entry.in_(wanted | legacy)
                )
            )
        ).all()
        for scope_id in order:
            hits = [
                r for r in rows if r.scope_id == scope_id and (r.entry in wanted or _blocks_old_spelling(r))
            ]
            if hits:
                return any(r.list_type == "block" for r in hits)
    active_allow = await session.scalar(
        select(ListEntry.id)
        .where(*scoped, ListEntry.direction == direction, ListEntry.list_type == "allow")
        .limit(1)
    )
    return active_allow is not None


async def suppressed(session: AsyncSession, organization_id: str, addresses: list[str]) -> list[str]:
    """Those of ``addresses`` that bounced or complained before, anywhere in the organization: the
    read-only entries of its send block list, which ``agentmx suppressions remove`` deletes."""
    keys = {_key(a): a for a in addresses if a}
    rows = await session.scalars(
        select(ListEntry.entry).where(
            ListEntry.scope_id == organization_id,
            ListEntry.organization_id == organization_id,
            ListEntry.direction == "send",
            ListEntry.list_type == "block",
            ListEntry.read_only.is_(True),
            ListEntry.entry.in_(list(keys)),
        )
    )
    return [keys[entry] for entry in rows.all()]


# Hooks called by the mail services.


async def send_check(session: AsyncSession, rt: Runtime, inbox: Inbox, recipients: list[str]) -> None:
    for address in recipients:
        if await refuses(session, inbox, "send", [address], rt):
            raise MessageRejected(
                f"Recipient {address} is not allowed",
                fix=f"'{address}' is on a send block list (or suppressed after a bounce or complaint), or "
                "missing from an active send allow list. Check the lists at /v0/lists/send/….",
            )


async def _is_reply(session: AsyncSession, inbox: Inbox, in_reply_to: str | None) -> bool:
    if not in_reply_to:
        return False
    found = await session.scalar(
        select(Message.id)
        .where(
            Message.inbox_id == inbox.id, Message.message_id == in_reply_to, Message.direction == "outbound"
        )
        .limit(1)
    )
    return found is not None


async def inbound_labeler(
    rt: Runtime, inbox: Inbox, envelope_from: str, header_from: str, in_reply_to: str | None
) -> set[str]:
    # A reply's direction is "reply" or "receive" (whether it answers our mail): both must be empty.
    directions = ("receive", "reply") if in_reply_to else ("receive",)
    scopes = {inbox.id, inbox.pod_id, inbox.organization_id}
    if all(_known_without_entries(rt, scopes, inbox.organization_id, d) for d in directions):
        return set()  # most mail: no list in the inbox's scopes, and no session (~30 us a message)
    async with rt.db.read() as session:
        for d in directions:  # (and cached for the next message)
            if scopes & await scopes_with_entries(session, rt, inbox.organization_id, d):
                break
        else:
            return set()
        direction = "reply" if await _is_reply(session, inbox, in_reply_to) else "receive"
        refused = await refuses(session, inbox, direction, [envelope_from, header_from], rt)
    return {"blocked"} if refused else set()


async def suppression_recorder(
    session: AsyncSession,
    rt: Runtime,
    organization_id: str,
    pod_id: str,
    inbox_id: str,
    address: str,
    kind: str,
) -> None:
    """A bounce or complaint suppresses the address for the whole organization (read-only entry)."""
    try:
        normalize_entry(address)
    except ValidationFailed:  # an unparsable address cannot be suppressed; nothing to record
        return
    await add_entry(session, ListScope(organization_id), "send", "block", address, kind, read_only=True)


async def remove_suppression(session: AsyncSession, organization_id: str, address: str) -> bool:
    """Lift a bounce or complaint block (the operator's way: the API may not delete read-only entries,
    and a recipient may have reported itself). False if none."""
    try:
        entry, _ = normalize_entry(address)
    except ValidationFailed:
        return False
    found = await _find(session, ListScope(organization_id), "send", "block", entry)
    if found is None or not found.read_only:
        return False
    await session.delete(found)
    await session.flush()
    return True


async def forget_inbox(session: AsyncSession, inbox: Inbox) -> None:
    """Inbox deletion: its own entries go too, or an inbox made later with the same address, in any
    pod, would find them in its lists and in its mail's way."""
    await session.execute(
        delete(ListEntry).where(ListEntry.scope_id == inbox.id, ListEntry.inbox_id == inbox.id)
    )


async def forget_pod(session: AsyncSession, pod: Pod) -> None:
    """Pod deletion: its own entries go too (its inboxes' went with them)."""
    await session.execute(
        delete(ListEntry).where(
            ListEntry.scope_id == pod.id, ListEntry.pod_id == pod.id, ListEntry.inbox_id.is_(None)
        )
    )


inbox_cleanup.append(forget_inbox)
pod_cleanup.append(forget_pod)
hooks.send_checks.append(send_check)
hooks.inbound_labelers.append(inbound_labeler)
hooks.suppression_recorders.append(suppression_recorder)
