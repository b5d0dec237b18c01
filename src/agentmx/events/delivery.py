"""Webhook delivery: one ``deliver_webhook`` job per (event, webhook), retried on the Svix schedule.

Every attempt is signed afresh (new svix-timestamp) under the same svix-id and recorded in
``webhook_attempts``. A webhook whose delivery exhausts the schedule, or that answers 410, is disabled.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import random
import time
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, update

from agentmx.db.models import Webhook, WebhookAttempt
from agentmx.db.types import utcnow
from agentmx.errors import ValidationFailed
from agentmx.events import http1, targets
from agentmx.events.bodies import encode_body
from agentmx.events.destinations import destination
from agentmx.events.ssrf import BlockedAddress
from agentmx.jobs.registry import Inserts, RetryAt, handler
from agentmx.services.events import retry_schedule
from agentmx.services.runtime import Runtime

log = logging.getLogger("agentmx.webhooks")

SLOW_LIMIT = 2  # concurrent requests per receiver before it counts as slow
SLOW_AFTER = 1.0  # seconds the oldest of them has been waiting
SLOW_DEFER = 1.0  # seconds a delivery to a slow receiver is put back
USER_AGENT = "agentmx-webhooks/1"

_in_flight: dict[str, list[float]] = {}  # webhook_id -> start times of requests in progress


def svix_message_id(event_id: str) -> str:
    """The svix-id: stable per event, so receivers can de-duplicate retries."""
    return "msg_" + event_id.removeprefix("evt_")


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def delivery_headers(secret: str, custom: dict[str, str], msg_id: str, body: bytes) -> dict[str, str]:
    timestamp = int(time.time())
    signature = sign(secret, msg_id, timestamp, body)
    headers = dict(custom)
    headers.update(
        {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "svix-id": msg_id,
            "svix-timestamp": str(timestamp),
            "svix-signature": signature,
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature,
        }
    )
    return headers


async def _post(rt: Runtime, target: Row[Any], msg_id: str, body: bytes) -> tuple[int | None, str | None]:
    # One deadline for the whole attempt: a slow resolver held a job slot past webhook_timeout.
    timeout = rt.settings.webhook_timeout
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        headers = delivery_headers(target.secret, target.headers, msg_id, body)
        try:
            async with asyncio.timeout_at(deadline):
                to = await destination(target.url, rt.settings.webhook_allow_private)
        except TimeoutError:
            return None, f"TimeoutError: the receiver's address was not found within {timeout:g} s"
        headers.update(to.host)
        # Redirects are not followed: they are failures (Standard Webhooks) and would dodge the SSRF check.
        status = await http1.post(to.url, body, headers, deadline - loop.time(), to.server_name)
    except (BlockedAddress, ValidationFailed) as exc:  # ValidationFailed: a URL stored before a rule
        return None, str(exc)
    except OSError as exc:  # network failures, TLS errors, timeouts, bad HTTP
        return None, f"{type(exc).__name__}: {exc}"[:2000]
    if 200 <= status < 300:
        return status, None
    return status, f"HTTP {status}"


async def _disable(rt: Runtime, target: Any, reason: str) -> None:
    """Disable the webhook, unless it was changed since this delivery read it: a user who re-enabled
    it (their receiver fixed) while a stale attempt was failing keeps it enabled; the next failure
    counts."""
    async with rt.db.transaction() as s:
        done = await s.execute(
            update(Webhook)
            .where(Webhook.id == target.id, Webhook.updated_at == target.updated_at)
            .values(enabled=False, updated_at=utcnow())
        )
    if done.rowcount:  # type: ignore[attr-defined]
        log.warning("webhook %s disabled: %s", target.id, reason)


def _slow(webhook_id: str) -> bool:
    """Is this receiver already holding SLOW_LIMIT job slots with a request older than SLOW_AFTER?"""
    starts = _in_flight.get(webhook_id, [])
    return len(starts) >= SLOW_LIMIT and time.monotonic() - min(starts) > SLOW_AFTER


def _next_try(delay: float) -> datetime:
    """Retry time with +-10 % jitter, so failed deliveries to one receiver do not retry in lockstep."""
    return utcnow() + timedelta(seconds=delay * random.uniform(0.9, 1.1))


# One lane per webhook (endpoint), as Svix isolates endpoints: a receiver that hangs holds at most half
# the job slots of a process, all receivers three quarters, and a request hanging past a second gives
# its slot back (jobs/lanes.py); the guard above limits it further once it is seen slow.
@handler("deliver_webhook", lane="webhook_id")
async def deliver_webhook(rt: Runtime, payload: dict[str, Any], attempts: int) -> Inserts | None:
    # The attempt number lives in the payload: deferrals for a slow receiver do not count as attempts.
    attempt = int(payload.get("attempt", 0))
    if _slow(payload["webhook_id"]):
        # A slow or hanging receiver must not occupy every job slot (outbound mail shares them).
        raise RetryAt(_next_try(SLOW_DEFER), "receiver is slow; deferred", payload=payload)
    webhook_id, event_id = payload["webhook_id"], payload["event_id"]
    found = await targets.load(rt, webhook_id, event_id)
    if found is None or not found[0].enabled:
        return None  # deleted or disabled meanwhile: events missed while disabled are not replayed
    target, event_body = found
    msg_id = svix_message_id(event_id)
    body = encode_body(event_body)
    started = time.monotonic()
    starts = _in_flight.setdefault(webhook_id, [])
    starts.append(started)
    try:
        status, error = await _post(rt, target, msg_id, body)
    finally:
        starts.remove(started)
        if not starts:
            _in_flight.pop(webhook_id, None)
    # Stored by the job runner in the transaction that finishes or reschedules this job.
    recorded: Inserts = [
        (
            WebhookAttempt,
            {
                "webhook_id": webhook_id,
                "event_id": event_id,
                "svix_id": msg_id,
                "attempt": attempt,
                "status_code": status,
                "error": error,
                "duration_ms": int((time.monotonic() - started) * 1000),
                "created_at": utcnow(),
            },
        )
    ]
    if error is None:
        return recorded
    if status == 410:  # Standard Webhooks: Gone means stop sending
        await _disable(rt, target, "receiver answered 410")
        return recorded
    schedule = retry_schedule(rt)
    if attempt + 1 < len(schedule):
        retry_payload = {**payload, "attempt": attempt + 1}
        raise RetryAt(_next_try(schedule[attempt + 1]), error, payload=retry_payload, inserts=recorded)
    await _disable(rt, target, f"delivery of {event_id} failed {attempt + 1} times: {error}")
    return recorded
