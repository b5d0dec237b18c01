"""API key management: scoped bearer keys and the rules that stop a key granting more than it has."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from agentmx.db.models import ApiKey
from agentmx.db.types import utcnow
from agentmx.errors import Forbidden, NotFound
from agentmx.services import keys
from agentmx.services.caller import Caller
from agentmx.services.pagination import Page, paginate
from agentmx.services.validation import fail

# Every permission name ApiKeyPermissions (SDK 2.0.18) knows.
PERMISSIONS = frozenset(
    [
        "inbox_read",
        "inbox_create",
        "inbox_update",
        "inbox_delete",
        "message_read",
        "message_reply",
        "message_send",
        "message_update",
        "message_delete",
        "agent_armor_release",
        "label_spam_read",
        "label_blocked_read",
        "label_unauthenticated_read",
        "label_trash_read",
        "draft_read",
        "draft_create",
        "draft_update",
        "draft_delete",
        "draft_send",
        "webhook_read",
        "webhook_create",
        "webhook_update",
        "webhook_delete",
        "domain_read",
        "domain_create",
        "domain_update",
        "domain_delete",
        "list_entry_read",
        "list_entry_create",
        "list_entry_delete",
        "metrics_read",
        "api_key_read",
        "api_key_create",
        "api_key_update",
        "api_key_delete",
        "app_connect",
        "app_share_owner",
        "account_update",
        "pod_read",
        "pod_create",
        "pod_update",
        "pod_delete",
        "calendar_read",
        "calendar_update",
        "calendar_event_read",
        "calendar_event_create",
        "calendar_event_update",
        "calendar_event_delete",
        "file_read",
        "file_create",
        "file_update",
        "file_delete",
    ]
)

UNSET: Any = object()


@dataclass(frozen=True)
class Scope:
    """Where a new key lives: the organization, one pod, or one inbox (with its pod)."""

    pod_id: str | None = None
    inbox_id: str | None = None


def check_permissions(value: Any) -> dict[str, bool] | None:
    """Validate an ApiKeyPermissions object; None means unrestricted."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise fail("permissions", "permissions must be an object of permission names to booleans")
    out: dict[str, bool] = {}
    for name, flag in value.items():
        if name not in PERMISSIONS:
            raise fail("permissions", f"Unknown permission '{name}'")
        if flag is None:
            continue
        if not isinstance(flag, bool):
            raise fail("permissions", f"Permission '{name}' must be true or false")
        out[name] = flag
    return out


def _check_grant(caller: Caller, permissions: dict[str, bool] | None) -> None:
    """A key may hand out only rights it holds itself."""
    if permissions is None:
        if not caller.unrestricted:
            raise Forbidden(
                "Forbidden",
                code="unrestricted_key_required",
                fix="Only an unrestricted API key (no permissions object) can create or restore an "
                "unrestricted key. Pass an explicit permissions object instead.",
            )
        return
    lacking = sorted(name for name, flag in permissions.items() if flag and not caller.can(name))
    if lacking:
        raise Forbidden(
            "Forbidden",
            code="permission_escalation",
            fix="An API key cannot grant permissions it does not have itself: " + ", ".join(lacking),
        )


def _check_power_over(caller: Caller, key: ApiKey, own_expiry: datetime | None) -> None:
    """A key may change or delete only keys with no more power than itself: every right the target
    holds, the caller holds, and the target expires no later (its scope is within the caller's already,
    or it would not be found). Otherwise a narrow key could demote or remove the admin key above it."""
    stronger = [name for name, flag in (key.permissions or {}).items() if flag and not caller.can(name)]
    if key.permissions is None and not caller.unrestricted:
        stronger = ["unrestricted"]
    outlives = own_expiry is not None and (key.expires_at is None or key.expires_at > own_expiry)
    if stronger or outlives:
        held = ", ".join(sorted(stronger)) if stronger else "a later expiry"
        raise Forbidden(
            "Forbidden",
            code="permission_escalation",
            fix=f"An API key cannot change or delete a key with more power than itself ({held}). "
            "Use a key that holds at least as much.",
        )


def visible(stmt: Any, caller: Caller) -> Any:
    stmt = stmt.where(ApiKey.organization_id == caller.organization_id)
    if caller.pod_id:
        stmt = stmt.where(ApiKey.pod_id == caller.pod_id)
    if caller.inbox_id:
        stmt = stmt.where(ApiKey.inbox_id == caller.inbox_id)
    return stmt


def _in_scope(key: ApiKey, caller: Caller, scope: Scope | None) -> bool:
    if key.organization_id != caller.organization_id:
        return False
    if caller.pod_id and key.pod_id != caller.pod_id:
        return False
    if caller.inbox_id and key.inbox_id != caller.inbox_id:
        return False
    if scope is not None and scope.inbox_id and key.inbox_id != scope.inbox_id:
        return False
    return not (scope is not None and scope.pod_id and key.pod_id != scope.pod_id)


async def get_key(session: AsyncSession, caller: Caller, key_id: str, scope: Scope | None = None) -> ApiKey:
    key = await session.get(ApiKey, key_id)
    if key is None or not _in_scope(key, caller, scope):
        raise NotFound("API key not found")
    return key


async def list_keys(
    session: AsyncSession,
    caller: Caller,
    scope: Scope | None,
    *,
    limit: int,
    page_token: str | None,
    ascending: bool,
) -> Page[ApiKey]:
    stmt = visible(select(ApiKey), caller)
    if scope is not None and scope.inbox_id:
        stmt = stmt.where(ApiKey.inbox_id == scope.inbox_id)
    elif scope is not None and scope.pod_id:
        stmt = stmt.where(ApiKey.pod_id == scope.pod_id)
    return await paginate(
        session,
        stmt,
        kind="api_keys",
        columns=[ApiKey.created_at, ApiKey.id],
        limit=limit,
        page_token=page_token,
        ascending=ascending,
    )


async def _caller_expiry(session: AsyncSession, caller: Caller) -> datetime | None:
    if caller.api_key_id is None:
        return None
    own = await session.get(ApiKey, caller.api_key_id)
    return own.expires_at if own is not None else None


async def create_key(
    session: AsyncSession,
    caller: Caller,
    scope: Scope,
    *,
    name: str | None,
    permissions: Any,
    expires_at: datetime | None,
) -> tuple[ApiKey, str]:
    """Issue a key in ``scope`` (already checked to be within the caller's scope)."""
    perms = check_permissions(permissions)
    _check_grant(caller, perms)
    if name is not None and not (1 <= len(name) <= 256):
        raise fail("name", "name must be 1-256 characters")
    own_expiry = await _caller_expiry(session, caller)
    if expires_at is not None:
        if expires_at <= utcnow():
            raise fail("expires_at", "expires_at must be in the future")
        if own_expiry is not None and expires_at > own_expiry:
            raise Forbidden(
                "Forbidden",
                code="permission_escalation",
                fix="A key cannot create a key that outlives it: choose an expires_at no later than "
                "this key's own expiry.",
            )
    else:
        expires_at = own_expiry
    return await keys.issue_key(
        session,
        organization_id=caller.organization_id,
        name=name or "API Key",
        pod_id=scope.pod_id,
        inbox_id=scope.inbox_id,
        permissions=perms,
        expires_at=expires_at,
    )


async def update_key(
    session: AsyncSession,
    caller: Caller,
    key_id: str,
    scope: Scope | None,
    *,
    name: str | None = UNSET,
    permissions: Any = UNSET,
) -> ApiKey:
    key = await get_key(session, caller, key_id, scope)
    _check_power_over(caller, key, await _caller_expiry(session, caller))
    if name is not UNSET:
        if name is None or not (1 <= len(name) <= 256):
            raise fail("name", "name must be 1-256 characters")
        key.name = name
    if permissions is not UNSET:
        perms = check_permissions(permissions)
        _check_grant(caller, perms)
        key.permissions = perms
    key.updated_at = utcnow()
    await session.flush()
    return key


async def delete_key(session: AsyncSession, caller: Caller, key_id: str, scope: Scope | None) -> None:
    key = await get_key(session, caller, key_id, scope)
    _check_power_over(caller, key, await _caller_expiry(session, caller))
    await session.delete(key)
    await session.flush()
