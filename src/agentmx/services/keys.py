"""API key issue and verification. Secrets are shown once; only their SHA-256 is stored."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from agentmx.db.models import ApiKey, Organization, Pod
from agentmx.db.types import utcnow
from agentmx.errors import Unauthorized
from agentmx.ids import new_id, new_uuid
from agentmx.services.caller import Caller

SECRET_PREFIX = "am_"
USED_AT_GRANULARITY = timedelta(seconds=60)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


_NEW_ORGANIZATION_LOCK = 0x61676D6F  # "agmo"


async def _first_organization(session: AsyncSession) -> Organization | None:
    return await session.scalar(select(Organization).order_by(Organization.created_at).limit(1))


async def ensure_organization(session: AsyncSession) -> Organization:
    """The first organization, created with its Default Pod when the server has none."""
    org = await _first_organization(session)
    if org is None and session.get_bind().dialect.name == "postgresql":
        # Setup scripts creating keys in parallel on a new database would each make an
        # organization (tenants that cannot see each other's inboxes). SQLite's writers are serial.
        await session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _NEW_ORGANIZATION_LOCK})
        org = await _first_organization(session)
    if org is None:
        org = Organization(id=new_id("org"))
        session.add(org)
        session.add(Pod(id=new_uuid(), organization_id=org.id, name="Default Pod", is_default=True))
        await session.flush()
    return org


async def issue_key(
    session: AsyncSession,
    *,
    organization_id: str,
    name: str,
    pod_id: str | None = None,
    inbox_id: str | None = None,
    permissions: dict[str, bool] | None = None,
    expires_at: datetime | None = None,
) -> tuple[ApiKey, str]:
    """Create a key; returns the row and the secret (the only time it exists in clear)."""
    secret = new_secret()
    now = utcnow()
    key = ApiKey(
        id=new_uuid(),
        organization_id=organization_id,
        pod_id=pod_id,
        inbox_id=inbox_id,
        name=name,
        prefix=secret[:10],
        secret_hash=hash_secret(secret),
        permissions=permissions,
        expires_at=expires_at,
        created_at=now,
        updated_at=now,
    )
    session.add(key)
    await session.flush()
    return key, secret


API_KEY_FIX = "Send 'Authorization: Bearer <api key>' with a key created by 'agentmx keys create'."


def _missing(
    message: str = "Missing or malformed Authorization header", fix: str = API_KEY_FIX
) -> Unauthorized:
    return Unauthorized(message, code="missing_authorization", fix=fix)


def one_credential(values: list[str]) -> str | None:
    """The one Authorization header (or api_key parameter) sent, None if none; two are refused (401):
    which one a proxy, a framework or this server would honour differs, so neither is guessed."""
    if len(values) > 1:
        raise Unauthorized(
            "Ambiguous credentials: more than one Authorization header or api_key parameter",
            code="ambiguous_authorization",
            fix="Send exactly one 'Authorization: Bearer <api key>' header.",
        )
    return values[0] if values else None


def parse_bearer(header: str | None, fix: str = API_KEY_FIX) -> str:
    """The secret of ``Authorization: Bearer <secret>``; ``fix`` tells a caller without one what to send."""
    # RFC 9110 11.1 and 11.4: the scheme is case-insensitive ("bearer" from curl scripts), then 1*SP.
    scheme, space, secret = (header or "").partition(" ")
    if not space or scheme.lower() != "bearer":
        raise _missing(fix=fix)
    secret = secret.lstrip(" ")
    if secret.split() != [secret]:  # empty, or contains whitespace (one C call, not a loop)
        raise _missing(fix=fix)
    return secret


def unknown_key() -> Unauthorized:
    return Unauthorized("Unknown API key", code="unknown_api_key", fix="Check the key, or create a new one.")


async def find_key(session: AsyncSession, secret: str) -> ApiKey:
    key = await session.scalar(select(ApiKey).where(ApiKey.secret_hash == hash_secret(secret)))
    if key is None or (key.expires_at is not None and key.expires_at <= utcnow()):
        raise unknown_key()
    return key


def used_at_is_stale(used_at: datetime | None) -> bool:
    # used_at is approximate on purpose: one write a minute per key, not one per request.
    return used_at is None or utcnow() - used_at > USED_AT_GRANULARITY


async def touch_key(session: AsyncSession, key_id: str) -> None:
    await session.execute(update(ApiKey).where(ApiKey.id == key_id).values(used_at=utcnow()))


def caller_for(key: ApiKey) -> Caller:
    return Caller(
        organization_id=key.organization_id,
        api_key_id=key.id,
        pod_id=key.pod_id,
        inbox_id=key.inbox_id,
        permissions=key.permissions,
    )
