"""Writing to the durable event log. Every event is written in the transaction of the fact it reports.

Fan-out happens here, in that same transaction: one ``deliver_webhook`` job per matching enabled
webhook (exactly once, durable across restarts), and a wake-up for live WebSocket streams after
commit (``rt.events_signal`` in this process, ``NOTIFY agentmx_events`` for the others).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import String, any_, bindparam, insert, select, text
from sqlalchemy import event as sa_event
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from agentmx.db import driver_reads
from agentmx.db.bulk import ArrayInsert, insert_returning
from agentmx.db.engine import after_commit
from agentmx.db.models import Event, Webhook
from agentmx.db.sqlite_inline import on_sqlite, sqlite_driver
from agentmx.db.transient import table_of, transient
from agentmx.db.types import utcnow
from agentmx.failure_log import FailureLog
from agentmx.ids import new_id
from agentmx.mail.stored_extracts import compact_event
from agentmx.services.jobs import enqueue_at_commit
from agentmx.services.runtime import Runtime
from agentmx.services.webhooks import matches

NOTIFY_CHANNEL = "agentmx_events"
PROCESS_TOKEN = secrets.token_hex(8)  # NOTIFY payload: which process committed
# Serialises event inserts on PostgreSQL from insert to commit, so seq order is commit order and
# a reader tailing "seq > last seen" never skips a row that commits late.
EVENT_LOCK_KEY = 0x61676D78  # "agmx"
PENDING = "agentmx_pending_events"
COMMITTED = "agentmx_committed_events"  # the same rows, for the after-commit hook
# The inbox label change log (services/inbox_events.py) is tailed by id the same way (clients sync from
# the last id they saw), so its rows are added under the same lock.
PENDING_LABEL_CHANGES = "agentmx_pending_label_changes"
WEBHOOKS_SEEN = "agentmx_webhooks_by_org"


@sa_event.listens_for(Session, "before_commit")
def _append_at_commit(session: Session) -> None:
    """Insert the transaction's events as its last step (on PostgreSQL under the event lock).

    Taking the lock at commit time (not when the event is recorded) keeps it short and means no
    other row lock is ever requested while holding it, so it cannot take part in a deadlock.
    SQLite writers are serialised (BEGIN IMMEDIATE): there insert order is commit order anyway.
    """
    if session.in_nested_transaction():
        return  # a savepoint's release fires this hook too: the rows wait for the real commit
    rows: list[Event] | None = session.info.pop(PENDING, None)
    label_changes: list[Any] | None = session.info.pop(PENDING_LABEL_CHANGES, None)
    if not rows and not label_changes:
        return
    postgres = session.get_bind().dialect.name == "postgresql"
    if rows and postgres:
        _insert_locked(session, rows)
    elif rows:
        _insert(session, rows)
    elif postgres:
        session.execute(_LOCK, {"k": EVENT_LOCK_KEY})
    if label_changes:
        session.add_all(label_changes)  # flushed by the commit, after this hook, under the lock


# Each statement a round trip on the commit path of every inbound batch, before its events reach streams.
_LOCK = text("SELECT pg_advisory_xact_lock(:k)")


def _event_values(rows: list[Event]) -> list[dict[str, Any]]:
    """The rows' columns; their bodies stay whole, the stored ones are compacted (``stored_extracts``)."""
    return [{c: getattr(row, c) for c in _EVENT_COLUMNS} | {"body": compact_event(row.body)} for row in rows]


def _set_seqs(rows: list[Event], returned: Sequence[Any]) -> None:
    seqs: dict[str, int] = {event_id: seq for event_id, seq in returned}
    for row in rows:
        row.seq = seqs[row.event_id]


def _insert(session: Session, rows: list[Event]) -> None:
    """One multi-row INSERT (a flush would be one per row, to learn each seq); sets ``row.seq``.

    The rows stay transient: after commit they are only read (live streams; webhook jobs load them by id).
    On the driver's path (``bulk.insert_returning``): the same bind processors, less machinery.
    """
    conn = session.connection()
    _set_seqs(rows, insert_returning(conn, _INSERT_COLUMNS_RETURNING_SEQ, _event_values(rows)))


def _insert_locked(session: Session, rows: list[Event]) -> None:
    """PostgreSQL: the event lock, the NOTIFY and ``_insert`` in one statement (one round trip).

    The lock is a CTE the INSERT reads from, so it is held before any row takes its seq. A NOTIFY
    is delivered by PostgreSQL only if and when this transaction commits, so queueing it with the
    INSERT changes nothing for listeners. The payload names this process: its own hub has the rows
    already (committed_listeners).
    """
    conn = session.connection()
    statement = _LOCKED_INSERTS.get(conn.dialect)
    if statement is None:
        statement = _LOCKED_INSERTS[conn.dialect] = ArrayInsert(
            _INSERT_COLUMNS_RETURNING_SEQ, conn.dialect, first=4, source="event_lock, "
        )
    sql = "WITH event_lock AS (SELECT pg_advisory_xact_lock($1), pg_notify($2, $3)) " + statement.sql
    params = (EVENT_LOCK_KEY, NOTIFY_CHANNEL, PROCESS_TOKEN, *statement.arrays(_event_values(rows)))
    _set_seqs(rows, conn.exec_driver_sql(sql, params).all())


# Built once: compiled once per dialect. RETURNING event_id too: rows come back in no promised
# order, event_id is unique. The columns are named (seq left to its sequence).
_EVENTS = table_of(Event)
_EVENT_COLUMNS = ("event_id", "event_type", "organization_id", "pod_id", "inbox_id", "body", "created_at")
_INSERT_COLUMNS_RETURNING_SEQ = (
    insert(_EVENTS)
    .values({c: bindparam(c, type_=_EVENTS.c[c].type) for c in _EVENT_COLUMNS})
    .returning(_EVENTS.c.event_id, _EVENTS.c.seq)
)
_LOCKED_INSERTS: dict[Dialect, ArrayInsert] = {}


_ENABLED_WEBHOOKS = select(Webhook).where(
    Webhook.organization_id == bindparam("organization_id"), Webhook.enabled.is_(True)
)
# PostgreSQL only (an array parameter: one SQL text for any number of organizations); every column,
# named as the model's attributes are.
_webhooks = table_of(Webhook).c
_ENABLED_WEBHOOKS_OF = select(*_webhooks).where(
    _webhooks.organization_id == any_(bindparam("orgs", type_=ARRAY(String))), _webhooks.enabled.is_(True)
)


def share_webhook_lookups(session: AsyncSession) -> None:
    """Look up each organization's webhooks once for the rest of this transaction.

    For callers recording many events that change no webhook (an inbound batch).
    """
    session.info.setdefault(WEBHOOKS_SEEN, {})


_lookups_aside = FailureLog(logging.getLogger("agentmx.events"), "webhook lookup beside an inbound batch")


async def look_up_webhooks_aside(session: AsyncSession, rt: Runtime, organization_ids: set[str]) -> None:
    """``share_webhook_lookups``, with these organizations' webhooks read now on another connection.

    On PostgreSQL an inbound batch runs this beside its first statement: the lookup is then not a
    round trip of its own on the group commit's path. Under READ COMMITTED the transaction's own
    read would also see what was committed when it ran, no more. SQLite has no round trips to
    save: there the organizations without webhooks are noted, and the transaction reads the
    others' when it records their first event.
    """
    share_webhook_lookups(session)
    if not organization_ids:
        return
    if rt.db.is_sqlite:
        await _note_organizations_without_webhooks(session, organization_ids)
        return
    if not rt.db.has_spare_connection():
        return
    try:
        # Autocommit, on asyncpg's own connection (db/driver_reads): one round trip, ~0.35 ms of CPU
        # less than an ORM query through a session of its own.
        async with rt.db.read_driver() as conn:
            found = await conn.execute(_ENABLED_WEBHOOKS_OF, {"orgs": sorted(organization_ids)})
    except Exception as exc:  # noqa: BLE001 (a shortcut only: the batch must not fail for it)
        # No second connection (PostgreSQL's connection limit, say): the transaction reads them
        # itself when it records its first event, as without this lookup.
        _lookups_aside.failed(exc)
        return
    _lookups_aside.succeeded()
    seen: dict[str, list[Webhook]] = {org: [] for org in organization_ids}
    for row in found:  # only read (matched, their ids queued): transient objects, as ORM ones would be
        seen[row.organization_id].append(transient(Webhook, **row._asdict()))
    session.info[WEBHOOKS_SEEN].update(seen)


_HAS_WEBHOOK = (
    select(_webhooks.organization_id)
    .where(_webhooks.organization_id == bindparam("organization_id"), _webhooks.enabled.is_(True))
    .limit(1)
)


async def _note_organizations_without_webhooks(session: AsyncSession, organization_ids: set[str]) -> None:
    """SQLite: the organizations with no enabled webhook, known to have none for the transaction.

    Asked on the transaction's own sqlite3 connection (the same snapshot the ORM query would read),
    which costs a few microseconds where that query cost ~0.2 ms a batch; most organizations have
    no webhook, and the others load theirs as before, when they record their first event.
    """
    conn = await session.connection()
    driver = sqlite_driver(conn.sync_connection)
    if driver is None:
        return
    compiled = driver_reads.compiled(_HAS_WEBHOOK, conn.dialect)
    seen = session.info[WEBHOOKS_SEEN]
    for organization_id in organization_ids:
        args = compiled.args({"organization_id": organization_id})
        if on_sqlite(driver.execute, compiled.sql, args).fetchone() is None:
            seen[organization_id] = []


async def _enabled_webhooks(session: AsyncSession, organization_id: str) -> Sequence[Webhook]:
    seen: dict[str, Sequence[Webhook]] | None = session.info.get(WEBHOOKS_SEEN)
    if seen is not None and organization_id in seen:
        return seen[organization_id]
    found = (await session.scalars(_ENABLED_WEBHOOKS, {"organization_id": organization_id})).all()
    if seen is not None:
        seen[organization_id] = found
    return found


def retry_schedule(rt: Runtime) -> list[float]:
    """Seconds before each webhook attempt (attempt 0 = first delivery)."""
    out = [float(part) for part in rt.settings.webhook_retry_schedule.split(",") if part.strip()]
    return out or [0.0]


async def record_event(
    session: AsyncSession,
    rt: Runtime,
    *,
    event_type: str,
    organization_id: str,
    pod_id: str | None,
    inbox_id: str | None,
    payload: dict[str, Any],
) -> Event:
    """Append an event. ``payload`` holds the payload keys (``message``, ``send``, ``domain`` …)."""
    event_id = new_id("evt")
    body = {"type": "event", "event_type": event_type, "event_id": event_id, **payload}
    row = transient(  # inserted with Core at commit, see _insert
        Event,
        event_id=event_id,
        event_type=event_type,
        organization_id=organization_id,
        pod_id=pod_id,
        inbox_id=inbox_id,
        body=body,
        created_at=utcnow(),
    )
    session.info.setdefault(PENDING, []).append(row)  # inserted at commit, see _append_at_commit
    hooks = await _enabled_webhooks(session, organization_id)
    if hooks:  # the schedule is parsed from the settings: not for the many organizations without any
        first = utcnow() + timedelta(seconds=retry_schedule(rt)[0])
        for hook in hooks:
            if matches(hook, row):
                enqueue_at_commit(
                    session,
                    rt,
                    "deliver_webhook",
                    {"webhook_id": hook.id, "event_id": event_id},
                    run_at=first,
                    key=f"webhook:{hook.id}:{event_id}",
                )
    committed = session.info.get(COMMITTED)
    if committed is None:
        # One hook for all of the transaction's events, run with the list as it is at commit: a group
        # commit's events reach the live hub together (one socket write per stream, not one per event).
        committed = session.info[COMMITTED] = []
        after_commit(session, lambda: _committed(rt, committed))
    committed.append(row)
    return row


# Called with each transaction's committed events, in commit order within a process (the live hub
# registers here); a listener returns False when it could not take them, and the log poll catches up.
committed_listeners: list[Callable[[list[Event]], bool]] = []


def _committed(rt: Runtime, rows: list[Event]) -> None:
    taken = bool(committed_listeners) and all([listener(rows) for listener in committed_listeners])
    if not taken:
        rt.events_signal.notify()
