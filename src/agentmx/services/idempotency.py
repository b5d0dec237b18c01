"""Idempotency-Key on sends (API.md 1.8), reusable by every send path (messages, drafts).

Usage::

    key = idempotency.parse_key(request.headers.get("idempotency-key"))   # None when absent
    fp = idempotency.fingerprint("send", inbox_id, body)
    async with idempotency.idempotent(rt, caller, key, fp) as slot:
        if slot.replay is not None:
            return slot.replay                      # the original {message_id, thread_id}
        async with rt.db.transaction() as s:
            result = ...send...
            await slot.complete(s, result)          # same transaction as the send

Rules: the key is claimed (state ``in_flight``) in its own short transaction before the send, so a
concurrent retry gets 409 and at most one send happens. ``complete`` marks it ``done`` with the
response in the send's transaction and sets the expiry to 24 h later. If the body raises, the claim
is released so the client may retry. A claim left behind by a crashed process lapses after
``IN_FLIGHT_LEASE``; a send that outlives its claim is rolled back (409) rather than sent twice.
Keys are per organization.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from agentmx.db.models import IdempotencyRecord
from agentmx.db.types import utcnow
from agentmx.errors import Conflict, ValidationFailed
from agentmx.services.caller import Caller
from agentmx.services.runtime import Runtime

KEY_SYNTAX = re.compile(r"[A-Za-z0-9\-._~]{1,256}")
RETENTION = timedelta(hours=24)
IN_FLIGHT_LEASE = timedelta(minutes=5)
PRUNE_BATCH = 20


def parse_key(header: str | None) -> str | None:
    """The Idempotency-Key header value; None when absent, 400 when empty or malformed."""
    if header is None:
        return None
    if header.strip() == "":
        raise ValidationFailed(
            "Idempotency-Key must not be empty",
            [{"path": ["Idempotency-Key"], "message": "empty"}],
            fix="Omit the header or send 1-256 characters of A-Z a-z 0-9 - . _ ~",
        )
    if not KEY_SYNTAX.fullmatch(header):
        raise ValidationFailed(
            "Idempotency-Key must be 1-256 characters of A-Z a-z 0-9 - . _ ~",
            [{"path": ["Idempotency-Key"], "message": "invalid characters or length"}],
        )
    return header


def fingerprint(*parts: Any) -> str:
    """A stable hash of what makes two requests "the same" (endpoint, inbox, body)."""
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class Slot:
    """One claimed key. ``replay`` is set when an earlier identical request already completed."""

    record_id: int | None = None
    replay: dict[str, Any] | None = None
    # With record_id, names this claim: SQLite gives a deleted row's id to the next insert.
    claimed_at: datetime | None = None

    def _mine(self) -> Any:
        return (
            (IdempotencyRecord.id == self.record_id)
            & (IdempotencyRecord.created_at == self.claimed_at)
            & (IdempotencyRecord.state == "in_flight")
        )

    async def complete(self, session: AsyncSession, response: dict[str, Any]) -> None:
        """Record the result in the caller's (send) transaction."""
        if self.record_id is None:
            return
        row = await session.scalar(select(IdempotencyRecord).where(self._mine()).with_for_update())
        if row is None:
            # The claim lapsed (IN_FLIGHT_LEASE) and was pruned or taken by a retry, which may have
            # sent already: raising rolls this send back, so the key still sends once.
            raise _conflict("The first request with this Idempotency-Key outlived its claim; retry it")
        row.state = "done"
        row.response = response
        row.expires_at = utcnow() + RETENTION


def _conflict(message: str) -> Conflict:
    return Conflict(
        message,
        fix="Use a new Idempotency-Key for a different request, or retry later if the first is still running.",
    )


async def _claim(rt: Runtime, organization_id: str, key: str, fp: str) -> Slot:
    now = utcnow()
    try:
        async with rt.db.transaction() as s:
            # FOR UPDATE: a send completing this key holds its row; wait for it rather than take
            # over a lapsed claim that has just become "done".
            row = await s.scalar(
                select(IdempotencyRecord)
                .where(IdempotencyRecord.organization_id == organization_id, IdempotencyRecord.key == key)
                .with_for_update()
            )
            if row is not None and row.expires_at <= now:
                await s.delete(row)
                await s.flush()
                row = None
            await _prune(s, organization_id, now)
            if row is not None:
                if row.request_hash != fp:
                    raise _conflict("Idempotency-Key was already used with a different request")
                if row.state == "done" and row.response is not None:
                    return Slot(replay=dict(row.response))
                raise _conflict("A request with this Idempotency-Key is still in progress")
            row = IdempotencyRecord(
                organization_id=organization_id,
                key=key,
                request_hash=fp,
                state="in_flight",
                created_at=now,
                expires_at=now + IN_FLIGHT_LEASE,
            )
            s.add(row)
            await s.flush()
            return Slot(record_id=row.id, claimed_at=now)
    except IntegrityError as exc:  # a concurrent first attempt won the insert
        raise _conflict("A request with this Idempotency-Key is still in progress") from exc


async def _prune(session: AsyncSession, organization_id: str, now: datetime) -> None:
    """Expired keys are deleted lazily, a few at a time, by later claims in the same organization."""
    stale = (
        select(IdempotencyRecord.id)
        .where(IdempotencyRecord.organization_id == organization_id, IdempotencyRecord.expires_at <= now)
        .limit(PRUNE_BATCH)
    )
    ids = list((await session.scalars(stale)).all())
    if ids:
        # expires_at again: on PostgreSQL a send completing one of them meanwhile moved it 24 h on.
        await session.execute(
            delete(IdempotencyRecord).where(
                IdempotencyRecord.id.in_(ids), IdempotencyRecord.expires_at <= now
            )
        )


async def _release(rt: Runtime, slot: Slot) -> None:
    async with rt.db.transaction() as s:
        await s.execute(delete(IdempotencyRecord).where(slot._mine()))


@asynccontextmanager
async def idempotent(rt: Runtime, caller: Caller, key: str | None, fp: str) -> AsyncIterator[Slot]:
    """Claim ``key`` for the body; a no-op slot when there is no key."""
    if key is None:
        yield Slot()
        return
    slot = await _claim(rt, caller.organization_id, key, fp)
    if slot.replay is not None:
        yield slot
        return
    try:
        yield slot
    except BaseException:
        await _release(rt, slot)
        raise
