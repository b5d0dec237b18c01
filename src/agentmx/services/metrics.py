"""Metrics computed from the event log and the stored rows: event counts, usage totals, rates.

SQL stays portable: each query is a plain filtered select on indexed columns (organization,
scope, time range); bucketing happens here in Python. Ranges are capped at 1000 buckets.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, literal, select
from sqlalchemy.ext.asyncio import AsyncSession

from agentmx.db import models
from agentmx.db.models import Event, Inbox, Message, Pod, Thread
from agentmx.db.types import utcnow
from agentmx.errors import Unprocessable
from agentmx.services.validation import fail

EVENT_TYPES = (
    "message.received",
    "message.received.spam",
    "message.received.blocked",
    "message.received.unauthenticated",
    "message.sent",
    "message.delivered",
    "message.bounced",
    "message.complained",
    "message.rejected",
    "domain.verified",
)
USAGE_BY_SCOPE = {
    "inbox": ("storage_bytes", "message_count", "thread_count"),
    "pod": ("storage_bytes", "message_count", "thread_count", "inbox_count", "domain_count"),
    "organization": (
        "storage_bytes",
        "message_count",
        "thread_count",
        "inbox_count",
        "domain_count",
        "pod_count",
    ),
}
USAGE_TYPES = USAGE_BY_SCOPE["organization"]
RATE_TYPES = {"bounce": ("message.bounced", "bounce"), "complaint": ("message.complained", "complaint")}
MAX_BUCKETS = 1000
MAX_PERIOD = 86400
RETENTION = timedelta(days=90)
DEFAULT_RANGE = timedelta(hours=24)
LEGACY_KEYS = ("sent", "delivered", "bounced", "delayed", "rejected", "complained", "received")


@dataclass(frozen=True)
class MetricScope:
    organization_id: str
    pod_id: str | None = None
    inbox_id: str | None = None

    @property
    def kind(self) -> str:
        return "inbox" if self.inbox_id else "pod" if self.pod_id else "organization"

    def where(self, model: Any) -> list[Any]:
        out = [model.organization_id == self.organization_id]
        if self.pod_id and hasattr(model, "pod_id"):
            out.append(model.pod_id == self.pod_id)
        if self.inbox_id:
            out.append((model.inbox_id if hasattr(model, "inbox_id") else model.id) == self.inbox_id)
        return out


@dataclass(frozen=True)
class Range:
    start: datetime
    end: datetime
    period: int | None
    limit: int | None
    descending: bool


def too_wide(detail: str) -> Unprocessable:
    return Unprocessable(
        "Query range too wide",
        code="query_range_too_wide",
        fix=f"{detail} Narrow the range between start and end, or use a larger period.",
    )


def check_range(
    start: datetime | None,
    end: datetime | None,
    period: int | None,
    limit: int | None,
    descending: bool,
    *,
    extra: int = 0,
) -> Range:
    """Defaults (last 24 h), clamping (future end → now) and the 90-day / 1000-bucket limits."""
    now = utcnow()
    end = min(end or now, now)
    if end <= now - RETENTION:  # before start's default below: end - 24 h may not exist (year 1)
        raise fail("end", "end must be within the last 90 days")
    start = start or end - DEFAULT_RANGE
    if start < now - RETENTION:
        raise fail("start", "start must be within the last 90 days")
    if start >= end:
        raise fail("start", "start must be before end")
    if period is not None and not (1 <= period <= MAX_PERIOD):
        raise fail("period", f"period must be between 1 and {MAX_PERIOD} seconds")
    if limit is not None and limit < 1:
        raise fail("limit", "limit must be at least 1")
    if period is not None:
        buckets = math.ceil(((end - start).total_seconds() + extra) / period)
        if buckets > MAX_BUCKETS:
            raise too_wide(f"The query spans {buckets} buckets; at most {MAX_BUCKETS} are allowed.")
    return Range(start, end, period, limit, descending)


def _finish(points: list[dict[str, Any]], rng: Range) -> list[dict[str, Any]]:
    if rng.descending:
        points.reverse()
    return points[: rng.limit] if rng.limit else points


def _check_types(values: Sequence[str] | None, allowed: Sequence[str], name: str) -> list[str]:
    if values is None:
        return list(allowed)
    for value in values:
        if value not in allowed:
            raise fail(name, f"Unknown {name[:-1].replace('_', ' ')} '{value}'")
    return list(dict.fromkeys(values))


async def _events(
    session: AsyncSession, scope: MetricScope, types: Sequence[str], start: datetime, end: datetime
) -> list[tuple[str, datetime]]:
    """(event_type, created_at) of matching events: counting needs no bodies."""
    stmt = select(Event.event_type, Event.created_at).where(
        *scope.where(Event),
        Event.event_type.in_(list(types)),
        Event.created_at >= start,
        Event.created_at < end,
    )
    return [(r[0], r[1]) for r in (await session.execute(stmt.order_by(Event.seq))).all()]


async def _event_bodies(
    session: AsyncSession, scope: MetricScope, types: Sequence[str], start: datetime, end: datetime
) -> list[Event]:
    stmt = select(Event).where(
        *scope.where(Event),
        Event.event_type.in_(list(types)),
        Event.created_at >= start,
        Event.created_at < end,
    )
    return list((await session.scalars(stmt.order_by(Event.seq))).all())


async def query_events(
    session: AsyncSession, scope: MetricScope, event_types: Sequence[str] | None, rng: Range
) -> dict[str, list[dict[str, Any]]]:
    types = _check_types(event_types, EVENT_TYPES, "event_types")
    rows = await _events(session, scope, types, rng.start, rng.end)
    out: dict[str, list[dict[str, Any]]] = {}
    for event_type in types:
        counts: dict[datetime, int] = {}
        for row_type, at in rows:
            if row_type != event_type:
                continue
            if rng.period:  # sum into period-second buckets aligned on start
                index = int((at - rng.start).total_seconds() // rng.period)
                at = rng.start + timedelta(seconds=index * rng.period)
            counts[at] = counts.get(at, 0) + 1
        out[event_type] = _finish([{"timestamp": t, "count": c} for t, c in sorted(counts.items())], rng)
    return out


# Usage: for each type, rows with a creation time (and a weight, for storage) in scope.
UsageSource = Callable[
    [AsyncSession, MetricScope, datetime, datetime], Awaitable[tuple[int, list[tuple[datetime, int]]]]
]


async def _counted(
    session: AsyncSession, model: Any, weight: Any, scope: MetricScope, start: datetime, end: datetime
) -> tuple[int, list[tuple[datetime, int]]]:
    """(total before start, [(created_at, weight)] within the range)."""
    conditions = scope.where(model)
    base = await session.scalar(
        select(func.coalesce(func.sum(weight), 0)).where(*conditions, model.created_at < start)
    )
    rows = (
        await session.execute(
            select(model.created_at, weight).where(
                *conditions, model.created_at >= start, model.created_at <= end
            )
        )
    ).all()
    return int(base or 0), [(r[0], int(r[1] or 0)) for r in rows]


def _source(model: Any, weight: Callable[[], Any]) -> UsageSource:
    async def source(
        session: AsyncSession, scope: MetricScope, start: datetime, end: datetime
    ) -> tuple[int, list[tuple[datetime, int]]]:
        return await _counted(session, model, weight(), scope, start, end)

    return source


def _one() -> Any:
    return literal(1)


async def _domains(
    session: AsyncSession, scope: MetricScope, start: datetime, end: datetime
) -> tuple[int, list[tuple[datetime, int]]]:
    domain = getattr(models, "Domain", None)  # the domains feature may not be installed
    if domain is None:
        return 0, []
    return await _counted(session, domain, _one(), scope, start, end)


USAGE_SOURCES: dict[str, UsageSource] = {
    "storage_bytes": _source(Message, lambda: Message.size),
    "message_count": _source(Message, _one),
    "thread_count": _source(Thread, _one),
    "inbox_count": _source(Inbox, _one),
    "pod_count": _source(Pod, _one),
    "domain_count": _domains,
}


async def query_usage(
    session: AsyncSession, scope: MetricScope, usage_types: Sequence[str] | None, rng: Range
) -> dict[str, list[dict[str, Any]]]:
    """Running totals at the end of each period (one point at ``end`` without a period)."""
    wanted = _check_types(usage_types, USAGE_TYPES, "usage_types")
    applicable = [t for t in wanted if t in USAGE_BY_SCOPE[scope.kind]]
    if rng.period:
        steps = math.ceil((rng.end - rng.start).total_seconds() / rng.period)
        grid = [min(rng.start + timedelta(seconds=rng.period * (i + 1)), rng.end) for i in range(steps)]
    else:  # one point at end (a whole-second period made two when the range had a fraction of one)
        grid = [rng.end]
    out: dict[str, list[dict[str, Any]]] = {}
    for usage_type in applicable:
        base, rows = await USAGE_SOURCES[usage_type](session, scope, rng.start, rng.end)
        rows.sort()
        points, total, i = [], base, 0
        for at in grid:
            while i < len(rows) and rows[i][0] <= at:
                total += rows[i][1]
                i += 1
            points.append({"timestamp": at, "value": total})
        out[usage_type] = _finish(points, rng)
    return out


def _recipients(event: Event, key: str) -> int:
    payload = event.body.get(key) if isinstance(event.body, dict) else None
    recipients = payload.get("recipients") if isinstance(payload, dict) else None
    return len(recipients) if isinstance(recipients, list) and recipients else 1


async def query_rates(
    session: AsyncSession,
    scope: MetricScope,
    rate_types: Sequence[str] | None,
    start: datetime | None,
    end: datetime | None,
    period: int | None,
    window: int | None,
    limit: int | None,
    descending: bool,
) -> dict[str, list[dict[str, Any]]]:
    """Rolling rates: at each grid point, affected recipients / sent recipients over the window."""
    types = _check_types(rate_types, tuple(RATE_TYPES), "rate_types")
    period = period if period is not None else 3600
    window = window if window is not None else 86400
    if not 1 <= period <= MAX_PERIOD:  # before ``window % period``: period=0 was a ZeroDivisionError (500)
        raise fail("period", f"period must be between 1 and {MAX_PERIOD} seconds")
    if window < 1 or window % period:
        raise fail("window", "window must be a positive whole multiple of period")
    rng = check_range(start, end, period, limit, descending, extra=window)
    since = rng.start - timedelta(seconds=window)
    needed = ["message.sent", *(RATE_TYPES[t][0] for t in types)]
    rows = await _event_bodies(session, scope, needed, since, rng.end + timedelta(microseconds=1))
    steps = math.ceil((rng.end - rng.start).total_seconds() / period)
    grid = [min(rng.start + timedelta(seconds=period * (i + 1)), rng.end) for i in range(steps)]
    sent = [(r.created_at, _recipients(r, "send")) for r in rows if r.event_type == "message.sent"]
    out: dict[str, list[dict[str, Any]]] = {}
    for rate_type in types:
        event_type, key = RATE_TYPES[rate_type]
        hits = [(r.created_at, _recipients(r, key)) for r in rows if r.event_type == event_type]
        points = []
        for at in grid:
            lo = at - timedelta(seconds=window)
            n_sent = sum(n for t, n in sent if lo < t <= at)
            n_hit = sum(n for t, n in hits if lo < t <= at)
            points.append({"timestamp": at, "rate": (n_hit / n_sent) if n_sent else None, "sent": n_sent})
        out[rate_type] = _finish(points, rng)
    return out


async def legacy(
    session: AsyncSession,
    scope: MetricScope,
    event_types: Sequence[str] | None,
    start: datetime,
    end: datetime,
) -> dict[str, dict[str, list[datetime]]]:
    """The pre-2025 form: timestamps of each message event, grouped under "message"."""
    allowed = tuple(f"message.{k}" for k in LEGACY_KEYS)
    types = _check_types(event_types, allowed, "event_types")
    if start >= end:
        raise fail("start_timestamp", "start_timestamp must be before end_timestamp")
    rows = await _events(session, scope, types, start, end)
    grouped: dict[str, list[datetime]] = {t.removeprefix("message."): [] for t in types}
    for row_type, at in rows:
        grouped[row_type.removeprefix("message.")].append(at)
    return {"message": grouped}
