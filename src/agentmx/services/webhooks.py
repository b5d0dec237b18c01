"""Webhooks: subscriptions at organization, pod or inbox scope, and which events each one receives."""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from agentmx.db.models import Event, Inbox, InboxEvent, Pod, Webhook
from agentmx.db.types import utcnow
from agentmx.db.unique import flush_unless_taken
from agentmx.errors import AlreadyTaken, LimitExceeded, NotFound
from agentmx.events.catalogue import check_event_types, effective_types
from agentmx.events.ssrf import check_url
from agentmx.ids import new_id
from agentmx.services import inboxes, pods
from agentmx.services.caller import Caller
from agentmx.services.pagination import Page, paginate
from agentmx.services.runtime import Runtime
from agentmx.services.validation import check_client_id, fail

T = TypeVar("T")

MAX_CHANNELS = 10
# Per organization, pod and inbox: each event is posted to every webhook that takes it, so this bounds
# the deliveries one event can queue ahead of other pods' (the job slots are shared).
MAX_WEBHOOKS = 100
# Advisory lock key (PostgreSQL) serialising webhook creates in an organization, so two at once cannot
# both pass the limit. SQLite serialises writers anyway.
CREATE_LOCK = 0x686F6F6B  # "hook"
MAX_HEADERS = 20
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}$")
# Visible ASCII, spaces and tabs: deliveries send headers as ASCII, so anything else could never be sent.
HEADER_VALUE = re.compile(r"[\x20-\x7e\t]*")
# Headers the delivery sets itself; a custom header must not replace them.
RESERVED_HEADERS = ("content-type", "content-length", "host", "transfer-encoding", "connection")
RESERVED_PREFIXES = ("svix-", "webhook-")


@dataclass(frozen=True)
class Route:
    """The route a webhook request came through: organization (both None), pod or inbox."""

    pod_id: str | None = None
    inbox_id: str | None = None


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


class Subscription(Protocol):
    """What decides which events a subscription takes: a push webhook or a polling webhook."""

    @property
    def event_types(self) -> list[str] | None: ...
    @property
    def pod_id(self) -> str | None: ...
    @property
    def inbox_id(self) -> str | None: ...
    @property
    def pod_ids(self) -> list[str]: ...
    @property
    def inbox_ids(self) -> list[str]: ...


class RoutedEvent(Protocol):
    """An event's routing columns: a log row (``Event``) or a live hub item."""

    @property
    def event_type(self) -> str: ...
    @property
    def organization_id(self) -> str: ...
    @property
    def pod_id(self) -> str | None: ...
    @property
    def inbox_id(self) -> str | None: ...


def receives(sub: Subscription, event: RoutedEvent) -> bool:
    """Does ``sub`` take ``event``? (Organization already matched by the caller's query.)"""
    if event.event_type not in effective_types(sub.event_types):
        return False
    if sub.inbox_id is not None:
        return event.inbox_id == sub.inbox_id
    if sub.pod_id is not None:
        return event.pod_id == sub.pod_id and (not sub.inbox_ids or event.inbox_id in sub.inbox_ids)
    if not sub.pod_ids and not sub.inbox_ids:
        return True
    return event.pod_id in sub.pod_ids or (event.inbox_id is not None and event.inbox_id in sub.inbox_ids)


def matches(hook: Webhook, event: Event) -> bool:
    """Does ``hook`` receive ``event``? (Organization already matched by the caller's query.)"""
    return hook.enabled and receives(hook, event)


def check_headers(headers: dict[str, Any], path: str = "headers") -> dict[str, str]:
    if not isinstance(headers, dict) or not headers:
        raise fail(path, "headers must be an object with at least one entry")
    out: dict[str, str] = {}
    for name, value in headers.items():
        lowered = name.lower()
        if not HEADER_NAME.fullmatch(name):  # match() let a final "\n" through
            raise fail(path, f"{name!r} is not a valid header name")
        if lowered in RESERVED_HEADERS or lowered.startswith(RESERVED_PREFIXES):
            raise fail(path, f"header {name!r} is set by the delivery and cannot be configured")
        if not isinstance(value, str) or len(value) > 4096 or not HEADER_VALUE.fullmatch(value):
            raise fail(path, f"header {name!r} has an invalid value")
        out[name] = value
    return out


def check_channels(values: list[str] | None, path: str) -> list[str]:
    if values is None:
        return []
    if len(values) > MAX_CHANNELS:
        raise fail(path, f"{path} may list at most {MAX_CHANNELS} entries")
    out: list[str] = []
    for value in values:
        if value not in out:
            out.append(value)
    return out


async def _resolve_pods(session: AsyncSession, caller: Caller, pod_ids: list[str], path: str) -> list[str]:
    for pod_id in pod_ids:
        try:
            # Pinned: the webhook will list the pod, which a concurrent delete must then unlist.
            await pods.get_pod(session, caller, pod_id, lock="pin")
        except NotFound as exc:
            raise fail(path, f"pod {pod_id!r} not found") from exc
    return pod_ids


async def _resolve_inboxes(
    session: AsyncSession, caller: Caller, inbox_ids: list[str], path: str, pod_id: str | None = None
) -> list[str]:
    out = []
    for inbox_id in inbox_ids:
        try:
            # Pinned: the webhook will list the inbox, which a concurrent delete must then unlist.
            inbox = await inboxes.get_inbox(session, caller, inbox_id, pod_id=pod_id, lock="pin")
        except NotFound as exc:
            raise fail(path, f"inbox {inbox_id!r} not found") from exc
        if inbox.id not in out:
            out.append(inbox.id)
    return out


async def owner_of(session: AsyncSession, caller: Caller, route: Route) -> Route:
    """Who owns a webhook created through ``route`` (scoped keys on the org route create in their scope).
    The owner is pinned: a concurrent delete of it waits for the new webhook, or this is a 404."""
    if route.inbox_id is not None:
        inbox = await inboxes.get_inbox(session, caller, route.inbox_id, lock="pin")
        return Route(pod_id=inbox.pod_id, inbox_id=inbox.id)
    if route.pod_id is not None:
        caller.require_pod_access(route.pod_id)
        pod = await pods.get_pod(session, caller, route.pod_id, lock="pin")
        return Route(pod_id=pod.id)
    if caller.inbox_id:
        return await owner_of(session, caller, Route(inbox_id=caller.inbox_id))
    if caller.pod_id:
        return await owner_of(session, caller, Route(pod_id=caller.pod_id))
    return Route()


def owned_by(stmt: Any, model: Any, caller: Caller, route: Route) -> Any:
    """Restrict a query on ``model`` (Webhook, PollingWebhook) to the rows a caller sees through a route."""
    stmt = stmt.where(model.organization_id == caller.organization_id)
    if caller.pod_id:
        stmt = stmt.where(model.pod_id == caller.pod_id)
    if caller.inbox_id:
        stmt = stmt.where(model.inbox_id == caller.inbox_id)
    if route.inbox_id is not None:
        stmt = stmt.where(model.inbox_id == route.inbox_id.strip().lower())
    elif route.pod_id is not None:
        stmt = stmt.where(model.pod_id == route.pod_id, model.inbox_id.is_(None))
    return stmt


def listed_through(stmt: Any, model: Any, caller: Caller, route: Route) -> Any:
    """``owned_by``, and on the organization route of an organization key only what was created there."""
    stmt = owned_by(stmt, model, caller, route)
    if route == Route() and caller.scope_type == "organization":
        stmt = stmt.where(model.pod_id.is_(None), model.inbox_id.is_(None))
    return stmt


async def check_route(session: AsyncSession, caller: Caller, route: Route) -> None:
    """The route's pod or inbox exists in the caller's scope (else 404)."""
    if route.inbox_id is not None:
        await inboxes.get_inbox(session, caller, route.inbox_id)
    elif route.pod_id is not None:
        await pods.get_pod(session, caller, route.pod_id)


async def resolve_channels(
    session: AsyncSession, caller: Caller, owner: Route, pod_ids: list[str], inbox_ids: list[str]
) -> tuple[list[str], list[str]]:
    """The pods and inboxes a new subscription of ``owner`` listens to, each checked to exist in scope.

    An inbox subscription is fixed to its inbox, a pod subscription lists only inboxes of its pod.
    Naming anything else is refused (400), not ignored: a pod key's caller naming another pod must
    learn that it will never hear from it (and a pod outside its scope is "not found", as an inbox is).
    """
    if owner.inbox_id is not None:
        own = await _resolve_inboxes(session, caller, inbox_ids, "inbox_ids", pod_id=owner.pod_id)
        if pod_ids or any(inbox_id != owner.inbox_id for inbox_id in own):
            raise fail("inbox_ids", "an inbox webhook is fixed to its inbox")
        return [], []
    if owner.pod_id is not None:
        if any(pod_id != owner.pod_id for pod_id in await _resolve_pods(session, caller, pod_ids, "pod_ids")):
            raise fail("pod_ids", "a pod webhook is fixed to its pod")
        return [], await _resolve_inboxes(session, caller, inbox_ids, "inbox_ids", pod_id=owner.pod_id)
    pod_list = await _resolve_pods(session, caller, pod_ids, "pod_ids")
    return pod_list, await _resolve_inboxes(session, caller, inbox_ids, "inbox_ids")


async def check_webhook_url(rt: Runtime, url: str) -> None:
    """A create's URL check (400 for a private or malformed destination). It resolves the host, so it
    runs before the create's transaction: on SQLite every writer, inbound mail included, waits while
    a transaction is open, and a slow resolver would hold them all."""
    await check_url(url, rt.settings.webhook_allow_private)


async def create_webhook(
    session: AsyncSession,
    caller: Caller,
    route: Route,
    *,
    url: str,
    event_types: list[str] | None,
    pod_ids: list[str] | None,
    inbox_ids: list[str] | None,
    client_id: str | None,
    headers: dict[str, Any] | None,
) -> Webhook:
    """``url`` has passed ``check_webhook_url``."""
    check_client_id(client_id)
    types = check_event_types(caller, event_types)
    if types is not None and not types:
        raise fail("event_types", "event_types must list at least one event type")
    pod_list = check_channels(pod_ids, "pod_ids")
    inbox_list = check_channels(inbox_ids, "inbox_ids")
    custom = check_headers(headers) if headers is not None else {}
    await serialise_creates(session, CREATE_LOCK, caller.organization_id)
    owner = await owner_of(session, caller, route)
    owner_scope = owner.inbox_id or owner.pod_id or caller.organization_id
    if client_id:
        existing = await session.scalar(
            select(Webhook).where(Webhook.owner_scope == owner_scope, Webhook.client_id == client_id)
        )
        if existing is not None:
            return existing
    await check_room(session, owner_scope)
    pod_list, inbox_list = await resolve_channels(session, caller, owner, pod_list, inbox_list)
    now = utcnow()
    hook = Webhook(
        id=new_id("ep"),
        organization_id=caller.organization_id,
        pod_id=owner.pod_id,
        inbox_id=owner.inbox_id,
        owner_scope=owner_scope,
        url=url,
        event_types=types,
        pod_ids=pod_list,
        inbox_ids=inbox_list,
        headers=custom,
        secret=new_secret(),
        enabled=True,
        client_id=client_id,
        created_at=now,
        updated_at=now,
    )
    if not await flush_unless_taken(session, hook):  # a concurrent create with the same client_id won
        existing = await session.scalar(
            select(Webhook).where(Webhook.owner_scope == owner_scope, Webhook.client_id == client_id)
        )
        if existing is None:
            raise AlreadyTaken("A webhook with this client_id already exists")
        return existing
    return hook


async def check_room(session: AsyncSession, owner_scope: str) -> None:
    """403 when the owner has MAX_WEBHOOKS enabled webhooks: only those are posted to (a disabled one
    costs nothing until it is enabled again, which checks this too)."""
    enabled = await session.scalar(
        select(func.count()).where(Webhook.owner_scope == owner_scope, Webhook.enabled.is_(True))
    )
    if (enabled or 0) >= MAX_WEBHOOKS:
        raise LimitExceeded(
            f"At most {MAX_WEBHOOKS} enabled webhooks per organization, pod and inbox",
            fix="Delete or disable a webhook you no longer use, or list more inboxes or pods on one you have.",
        )


async def serialise_creates(session: AsyncSession, lock: int, organization_id: str) -> None:
    """Creates of one kind in an organization, one at a time on PostgreSQL (limits, client_ids).
    Taken before any row lock, and only by creates: it can never close a cycle with row locks."""
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(
            text("SELECT pg_advisory_xact_lock(:k, hashtext(:org))"), {"k": lock, "org": organization_id}
        )


async def get_webhook(
    session: AsyncSession, caller: Caller, route: Route, webhook_id: str, *, lock: bool = False
) -> Webhook:
    """``lock``: for changes computed from the row (id lists, headers), which two requests at once on
    PostgreSQL would otherwise both compute from the old row, the later dropping the other's change."""
    stmt = owned_by(select(Webhook).where(Webhook.id == webhook_id), Webhook, caller, route)
    if lock:
        stmt = stmt.with_for_update(key_share=True).execution_options(populate_existing=True)
    hook = await session.scalar(stmt)
    if hook is None:
        raise NotFound("Webhook not found")
    return hook


async def list_webhooks(
    session: AsyncSession,
    caller: Caller,
    route: Route,
    *,
    limit: int,
    page_token: str | None,
    ascending: bool,
) -> Page[Webhook]:
    return await list_subscriptions(
        session, caller, route, Webhook, "webhooks", limit=limit, page_token=page_token, ascending=ascending
    )


async def list_subscriptions(
    session: AsyncSession,
    caller: Caller,
    route: Route,
    model: Any,
    kind: str,
    *,
    limit: int,
    page_token: str | None,
    ascending: bool,
) -> Page[Any]:
    """A page of the subscriptions of ``model`` (webhooks, polling webhooks) created through ``route``,
    newest first; ``kind`` keeps page tokens of one list from being used on another (400)."""
    await check_route(session, caller, route)
    return await paginate(
        session,
        listed_through(select(model), model, caller, route),
        kind=kind,
        columns=[model.created_at, model.id],
        limit=limit,
        page_token=page_token,
        ascending=ascending,
    )


async def update_webhook(
    session: AsyncSession,
    caller: Caller,
    route: Route,
    webhook_id: str,
    *,
    add_pod_ids: list[str] | None = None,
    remove_pod_ids: list[str] | None = None,
    add_inbox_ids: list[str] | None = None,
    remove_inbox_ids: list[str] | None = None,
    event_types: list[str] | None = None,
    enabled: bool | None = None,
) -> Webhook:
    # Lock order pod and inbox rows, then webhook rows (as in delete_pod / delete_inbox -> forget_*):
    # the pods and inboxes to add are pinned by _resolve_* before the webhook row is locked. Its
    # owner never changes, so the unlocked read is enough to check the request.
    hook = await get_webhook(session, caller, route, webhook_id)
    scoped_to_inbox = hook.inbox_id is not None
    scoped_to_pod = hook.pod_id is not None and not scoped_to_inbox
    if scoped_to_inbox and (add_pod_ids or remove_pod_ids or add_inbox_ids or remove_inbox_ids):
        raise fail("inbox_ids", "an inbox webhook is fixed to its inbox")
    if scoped_to_pod and (add_pod_ids or remove_pod_ids):
        raise fail("pod_ids", "a pod webhook is fixed to its pod")
    added_pods = await _resolve_pods(session, caller, add_pod_ids, "add_pod_ids") if add_pod_ids else []
    added_inboxes = (
        await _resolve_inboxes(session, caller, add_inbox_ids, "add_inbox_ids", pod_id=hook.pod_id)
        if add_inbox_ids
        else []
    )
    hook = await get_webhook(session, caller, route, webhook_id, lock=True)
    pod_list = list(hook.pod_ids)
    inbox_list = list(hook.inbox_ids)
    pod_list += [p for p in added_pods if p not in pod_list]
    if remove_pod_ids:
        pod_list = [p for p in pod_list if p not in remove_pod_ids]
    inbox_list += [i for i in added_inboxes if i not in inbox_list]
    if remove_inbox_ids:
        removed = {i.strip().lower() for i in remove_inbox_ids}
        inbox_list = [i for i in inbox_list if i not in removed]
    if (hook.pod_ids or hook.inbox_ids) and not pod_list and not inbox_list:
        # Following nothing means every event of the organization (or pod): never widened by a removal.
        raise fail(
            "remove_inbox_ids" if hook.inbox_ids else "remove_pod_ids",
            "a webhook must keep at least one of the pods or inboxes it lists; "
            "delete it and create one without them to follow everything",
        )
    if len(pod_list) > MAX_CHANNELS or len(inbox_list) > MAX_CHANNELS:
        raise fail("pod_ids", f"a webhook may list at most {MAX_CHANNELS} pods and {MAX_CHANNELS} inboxes")
    if event_types:
        hook.event_types = check_event_types(caller, event_types)
    if enabled is not None:
        if enabled and not hook.enabled:
            check_event_types(caller, hook.event_types)  # re-enabling needs the label permissions again
            await check_room(session, hook.owner_scope)
        hook.enabled = enabled
    hook.pod_ids = pod_list
    hook.inbox_ids = inbox_list
    hook.updated_at = utcnow()
    return hook


async def update_headers(
    session: AsyncSession,
    caller: Caller,
    route: Route,
    webhook_id: str,
    *,
    headers: dict[str, Any] | None,
    remove_headers: list[str] | None,
) -> Webhook:
    if headers is None and remove_headers is None:
        raise fail("headers", "give headers or remove_headers")
    hook = await get_webhook(session, caller, route, webhook_id, lock=True)
    new = check_headers(headers) if headers is not None else {}
    removed = {name.lower() for name in remove_headers or []}
    if removed & {name.lower() for name in new}:
        raise fail("remove_headers", "a header cannot be both set and removed")
    current = {k: v for k, v in hook.headers.items() if k.lower() not in removed}
    for name, value in new.items():
        current = {k: v for k, v in current.items() if k.lower() != name.lower()}
        current[name] = value
    if len(current) > MAX_HEADERS:
        raise fail("headers", f"a webhook may carry at most {MAX_HEADERS} custom headers")
    hook.headers = current
    hook.updated_at = utcnow()
    return hook


async def delete_webhook(session: AsyncSession, caller: Caller, route: Route, webhook_id: str) -> None:
    hook = await get_webhook(session, caller, route, webhook_id)
    await session.delete(hook)


async def forget_inbox(session: AsyncSession, inbox: Inbox) -> None:
    """Inbox deletion: drop its own webhooks and label log, and unlist it from other webhooks.

    Its events stay in the log (the pod's and organization's history) but no longer name it: an
    inbox made later with the same address (its id) would otherwise take them for its own, in its
    metrics and in a resumed stream or polling read of a key scoped to it (old mail reappearing)."""
    for hook in await lock_organization_rows(session, Webhook, inbox.organization_id):
        _disable_if_following_nothing(hook, unlisted(hook, inbox_id=inbox.id))
    await session.execute(delete(Webhook).where(Webhook.inbox_id == inbox.id))
    await session.execute(delete(InboxEvent).where(InboxEvent.inbox_id == inbox.id))
    await session.execute(
        update(Event)
        .where(Event.organization_id == inbox.organization_id, Event.inbox_id == inbox.id)
        .values(inbox_id=None)
    )


async def forget_pod(session: AsyncSession, pod: Pod) -> None:
    """Pod deletion: unlist it from the organization's webhooks (a pod with webhooks of its own is
    not deleted: see POD_DEPENDENTS)."""
    for hook in await lock_organization_rows(session, Webhook, pod.organization_id):
        _disable_if_following_nothing(hook, unlisted(hook, pod_id=pod.id))


async def lock_organization_rows(session: AsyncSession, model: type[T], organization_id: str) -> Sequence[T]:
    """All the organization's subscriptions of ``model`` (webhooks, polling webhooks), locked in one
    order before any is changed or deleted: a deletion locking its own first would hold those out of
    order, and two deletions could deadlock."""
    table: Any = model
    listing = await session.scalars(
        select(model)
        .where(table.organization_id == organization_id)
        .order_by(table.id)
        .with_for_update(key_share=True)
    )
    return listing.all()


def unlisted(sub: Any, *, pod_id: str | None = None, inbox_id: str | None = None) -> bool | None:
    """Take a deleted pod or inbox off what ``sub`` follows. None: it was not listed; else whether
    ``sub`` is left following nothing, which would mean every event of its organization (or pod)."""
    pods_left = [p for p in sub.pod_ids if p != pod_id]
    inboxes_left = [i for i in sub.inbox_ids if i != inbox_id]
    if len(pods_left) == len(sub.pod_ids) and len(inboxes_left) == len(sub.inbox_ids):
        return None
    sub.pod_ids, sub.inbox_ids = pods_left, inboxes_left
    sub.updated_at = utcnow()
    return not pods_left and not inboxes_left


def _disable_if_following_nothing(hook: Webhook, following_nothing: bool | None) -> None:
    # Disabled rather than widened to the whole organization: its owner decides what it follows next.
    if following_nothing:
        hook.enabled = False
