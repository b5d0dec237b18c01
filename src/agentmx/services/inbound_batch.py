"""Storing many inbound copies in one transaction with a fixed number of statements.

Used by group commit: per batch one lookup of known Message-IDs, one load of the threads they
belong to, then batched INSERTs, instead of a handful of round trips per message. The rules are
the same as ``mailstore.store_message`` (dedupe per inbox, threading by In-Reply-To/References,
thread aggregates, ``message.received*`` events); copies in the same batch see each other.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, String, any_, bindparam, func, insert, literal_column, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession

from agentmx.db import driver_reads
from agentmx.db.bulk import insert_all
from agentmx.db.models import Attachment, Inbox, Message, MessageLabel, Thread, UnmatchedReference
from agentmx.db.sqlite_inline import on_sqlite, sqlite_driver
from agentmx.db.transient import column_values, table_of
from agentmx.db.types import utcnow
from agentmx.failure_log import FailureLog
from agentmx.mail.parse import ParsedMessage
from agentmx.services import blob_bytes, events, mailstore, waiting_threads
from agentmx.services.mailstore import HIDDEN_LABELS, StoredBlobs
from agentmx.services.runtime import Runtime

ONE_MICROSECOND = timedelta(microseconds=1)  # the columns' resolution on both databases
# A Core SELECT (no ORM compile step for plain columns), built once (its cache key computed once).
# On PostgreSQL with array parameters: an IN list's text changes with its length, and each new text
# is parsed again (a round trip) on each of the pool's connections; most batches paid one.
# Threads waiting for one of the ids (waiting_threads) are read by the same statement.
_KNOWN_IDS_ARRAYS = waiting_threads.known_or_waiting(
    lambda column: column == any_(bindparam("inboxes", type_=ARRAY(String))),
    lambda column: column == any_(bindparam("ids", type_=ARRAY(String))),
)


def _json_values(name: str) -> Any:
    return select(literal_column("value")).select_from(func.json_each(bindparam(name, type_=String)))


# On SQLite, on the transaction's own sqlite3 connection (bulk.sqlite_driver), not through the
# session (~0.15 ms a batch): one text for any number of ids (JSON arrays), and the same plan, the
# unique index on (inbox_id, message_id).
_KNOWN_IDS_JSON = waiting_threads.known_or_waiting(
    lambda column: column.in_(_json_values("inboxes")), lambda column: column.in_(_json_values("ids"))
)


async def _rows_on_sqlite(session: AsyncSession, stmt: Select[Any], values: dict[str, Any]) -> list[Any]:
    """``stmt``'s rows, read on the batch transaction's own sqlite3 connection (its snapshot)."""
    conn = await session.connection()
    driver = sqlite_driver(conn.sync_connection)
    assert driver is not None
    compiled = driver_reads.compiled(stmt, conn.dialect)
    raw = on_sqlite(driver.execute, compiled.sql, compiled.args(values)).fetchall()
    return compiled.rows(raw, lambda: list(stmt.selected_columns.keys()))


async def _known_ids_on_sqlite(session: AsyncSession, inboxes: list[str], ids: list[str]) -> list[Any]:
    # The stdlib's JSON: text it cannot bind fails as the ids themselves would (orjson refuses more).
    values = {"inboxes": json.dumps(inboxes, ensure_ascii=False), "ids": json.dumps(ids, ensure_ascii=False)}
    return await _rows_on_sqlite(session, _KNOWN_IDS_JSON, values)


_known_ids_aside = FailureLog(
    logging.getLogger("agentmx.smtp"), "known Message-ID lookup beside an inbound batch"
)


async def _known_ids_on_postgres(
    session: AsyncSession, rt: Runtime, params: dict[str, list[str]]
) -> list[Any]:
    """The stored copies' ids, read outside the batch's transaction, on the driver's connection.

    Under READ COMMITTED a statement of the transaction would see what was committed when it ran, no
    more, as this autocommit read does: the transaction has written nothing yet (it pinned inboxes),
    and group commit runs one batch at a time, so earlier batches are committed. Through the session
    it cost an ORM execute a batch (~0.15 ms of CPU).
    Without a spare connection, or if the read fails, the transaction reads them itself.
    """
    if rt.db.has_spare_connection():
        try:
            async with rt.db.read_driver() as conn:
                found = (await conn.execute(_KNOWN_IDS_ARRAYS, params)).all()
        except Exception as exc:  # noqa: BLE001 (read again below, where an error fails the batch)
            _known_ids_aside.failed(exc)
        else:
            _known_ids_aside.succeeded()
            return found
    return list((await session.execute(_KNOWN_IDS_ARRAYS, params)).all())


@dataclass
class InboundCopy:
    inbox: Inbox
    raw: bytes
    parsed: ParsedMessage
    blobs: StoredBlobs
    labels: set[str]


class InboxesGone(Exception):
    """Inboxes deleted (or deleted and made again) since the recipients of their copies were checked."""

    def __init__(self, inbox_ids: set[str]) -> None:
        super().__init__(f"inboxes gone: {sorted(inbox_ids)}")
        self.inbox_ids = inbox_ids


_i = table_of(Inbox).c
_CHECKED = (_i.id, _i.organization_id, _i.pod_id, _i.created_at)  # what tells one inbox from the next
# PostgreSQL: pinned (FOR KEY SHARE, in id order: row_locks), one text for any number of inboxes.
_PIN_INBOXES_ARRAYS = (
    select(*_CHECKED)
    .where(_i.id == any_(bindparam("inboxes", type_=ARRAY(String))))
    .order_by(_i.id)
    .with_for_update(read=True, key_share=True)
)
# SQLite: writers are serialised (BEGIN IMMEDIATE), so a read in the batch's transaction holds.
_INBOXES_JSON = select(*_CHECKED).where(_i.id.in_(_json_values("inboxes")))


async def _pin_checked_inboxes(session: AsyncSession, rt: Runtime, copies: list[InboundCopy]) -> None:
    """Pin the copies' inboxes (row_locks: inbox before thread; a deletion now waits for this batch),
    or raise InboxesGone for those no longer the inbox that was checked. An address is an inbox's id:
    one made again there (in another pod, or organization) would otherwise take the old one's mail,
    stored under the old one's pod and organization."""
    ids = sorted({c.inbox.id for c in copies})
    if rt.db.is_sqlite:
        found = await _rows_on_sqlite(
            session, _INBOXES_JSON, {"inboxes": json.dumps(ids, ensure_ascii=False)}
        )
    else:
        found = list((await session.execute(_PIN_INBOXES_ARRAYS, {"inboxes": ids})).all())
    current = {row.id: (row.organization_id, row.pod_id, row.created_at) for row in found}
    gone = {
        c.inbox.id
        for c in copies
        if current.get(c.inbox.id) != (c.inbox.organization_id, c.inbox.pod_id, c.inbox.created_at)
    }
    if gone:
        raise InboxesGone(gone)


async def store_inbound(
    session: AsyncSession, rt: Runtime, copies: list[InboundCopy]
) -> list[tuple[Message, bool]]:
    """Store each copy (or find its earlier copy); returns (message, is_new) in order. Raises
    InboxesGone, storing nothing, when an inbox is not the one its copy's recipient check found."""
    await _pin_checked_inboxes(session, rt, copies)
    now = utcnow()
    ids = [mailstore.message_id_for(c.parsed, c.raw, c.inbox) for c in copies]
    lookups = [mailstore.lookup_ids(mid, c.parsed) for mid, c in zip(ids, copies, strict=True)]
    wanted = {(c.inbox.id, m) for c, ls in zip(copies, lookups, strict=True) for m in ls}
    # One webhook query per organization, not per message; beside the next statement.
    webhooks = events.look_up_webhooks_aside(session, rt, {c.inbox.organization_id for c in copies})
    known: waiting_threads.Found = {}
    waiting: waiting_threads.Found = {}
    if not wanted:
        await webhooks
    else:
        inbox_pks, message_ids = list({i for i, _ in wanted}), list({m for _, m in wanted})
        if rt.db.is_sqlite:  # no round trips to overlap: one after the other, no tasks
            await webhooks
            known_rows = await _known_ids_on_sqlite(session, inbox_pks, message_ids)
        else:
            # Both finish before either's error is raised: the transaction's rollback must not meet a
            # statement still running on its connection (asyncpg would then pool it mid-transaction).
            rows, _ = await asyncio.gather(
                _known_ids_on_postgres(session, rt, {"inboxes": inbox_pks, "ids": message_ids}),
                webhooks,
                return_exceptions=True,
            )
            if isinstance(rows, BaseException):
                raise rows
            known_rows = rows
        known, waiting = waiting_threads.split(known_rows, wanted)
    thread_ids = {tid for _, tid in known.values()} | {tid for _, tid in waiting.values()}
    threads: dict[str, Thread] = {}
    if thread_ids:
        # Threads locked in id order (their inboxes are pinned already), so that batches sharing
        # threads cannot deadlock.
        found = await session.scalars(
            select(Thread)
            .where(Thread.id.in_(thread_ids))
            .order_by(Thread.id)
            .with_for_update(**mailstore.THREAD_LOCK)
        )
        threads = {t.id: t for t in found.all()}
    labels = await mailstore.thread_labels(session, list(threads))
    attachments = await mailstore.thread_attachments(session, list(threads))
    own = [
        known[(c.inbox.id, mid)][0] for c, mid in zip(copies, ids, strict=True) if (c.inbox.id, mid) in known
    ]
    existing: dict[str, Message] = {}
    if own:
        existing = {
            m.id: m for m in (await session.scalars(select(Message).where(Message.id.in_(own)))).all()
        }

    out: list[tuple[Message, bool]] = []
    fresh: dict[tuple[str, str], tuple[Message, Thread]] = {}
    new_threads: list[Thread] = []
    waited_in_batch: dict[tuple[str, str], Thread] = {}  # the first of this batch's waiting for each id
    unmatched: list[dict[str, str]] = []
    inline: blob_bytes.Inline = {}
    with session.no_autoflush:
        for copy, mid, refs in zip(copies, ids, lookups, strict=True):
            # Each copy its own time, later than the one before: sharing the batch's, a thread's
            # messages tied and listed in id order (random within a millisecond), a reply before the
            # message it answers and not where the thread's last_message_id and preview said.
            now = max(utcnow(), now + ONE_MICROSECOND)
            key = (copy.inbox.id, mid)
            if key in fresh:
                out.append((fresh[key][0], False))
                continue
            if key in known:
                message = existing[known[key][0]]
                received = _own_mail_back(message, copy.labels, now)
                if received:
                    own_thread = threads[message.thread_id]
                    own_thread.received_timestamp = own_thread.updated_at = now
                    labels[own_thread.id] |= set(message.label_names)
                    await mailstore.record_received(
                        session,
                        rt,
                        message,
                        own_thread,
                        set(labels[own_thread.id]),
                        list(attachments[own_thread.id]),
                    )
                out.append((message, received))
                continue
            thread = _referenced_thread(copy.inbox, refs[1:], fresh, known, threads)
            answers_nothing_here = thread is None
            if thread is None:
                thread = _waiting_thread(key, waiting, threads) or waited_in_batch.get(key)
            if thread is None:
                thread = mailstore.new_thread(copy.inbox, copy.parsed.subject, now, detached=True)
                new_threads.append(thread)
                labels[thread.id], attachments[thread.id] = set(), []
            message = mailstore.build_message(
                copy.inbox,
                thread,
                mid,
                copy.raw,
                copy.parsed,
                copy.blobs,
                "inbound",
                copy.labels,
                [],
                now,
                detached=True,
            )
            mailstore.join_thread(thread, message, "inbound")
            if answers_nothing_here:
                unmatched += waiting_threads.unmatched_rows(message, refs[1:])
                for ref in refs[1:]:
                    waited_in_batch.setdefault((copy.inbox.id, ref), thread)
            labels[thread.id] |= set(message.label_names)
            attachments[thread.id] = attachments[thread.id] + list(message.attachments)
            await mailstore.record_received(
                session, rt, message, thread, set(labels[thread.id]), list(attachments[thread.id])
            )
            fresh[key] = (message, thread)
            inline |= copy.blobs.inline
            out.append((message, True))
    await insert_rows(session, new_threads, [m for m, _ in fresh.values()], unmatched, inline)
    await session.flush()  # aggregates of threads stored earlier, events
    return out


async def insert_rows(
    session: AsyncSession,
    threads: list[Thread],
    messages: list[Message],
    unmatched: list[dict[str, str]],
    inline: blob_bytes.Inline,
) -> None:
    """New threads and messages (with labels, attachments and the ids they wait for: waiting_threads)
    and their small blobs, as multi-row INSERTs (on PostgreSQL one statement: ``bulk.insert_all``).

    The unit of work's per-object bookkeeping was most of a batch's cost; these objects are only
    read afterwards (events, callers), so they stay transient. Every column is written from the
    object, as the flush would: the builders (``mailstore.new_thread``/``build_message``) set
    every column that has a default.
    """
    labels = [{"message_pk": m.id, "label": label.label} for m in messages for label in m.labels]
    files = [column_values(a) | {"message_pk": m.id} for m in messages for a in m.attachments]
    await insert_all(
        session,
        [
            (_INSERT_THREAD, [column_values(t) for t in threads]),
            (_INSERT_MESSAGE, [column_values(m) for m in messages]),
            (_INSERT_LABEL, labels),
            (_INSERT_ATTACHMENT, files),
            (_INSERT_UNMATCHED, unmatched),
            blob_bytes.insert_part(session, inline),
        ],
    )


_INSERT_THREAD = insert(table_of(Thread))
_INSERT_MESSAGE = insert(table_of(Message))
_INSERT_LABEL = insert(table_of(MessageLabel))
_INSERT_ATTACHMENT = insert(table_of(Attachment))
_INSERT_UNMATCHED = insert(table_of(UnmatchedReference))


def _own_mail_back(message: Message, labels: set[str], now: datetime) -> bool:
    """Mail the inbox sent coming back to it (to itself, or through a list): it is received too, as
    the one message it already is (same Message-ID), now also labelled received. Adds the labels.
    A copy with a hiding label is not (its receive lists refused it, or it came back marked spam or
    unauthenticated through a list): the label would hide the sent message itself."""
    if (
        message.direction != "outbound"
        or "received" in message.label_names
        or labels.intersection(HIDDEN_LABELS)
    ):
        return False
    for label in sorted(labels - set(message.label_names)):
        message.labels.append(MessageLabel(label=label))
    message.updated_at = now
    return True


def _referenced_thread(
    inbox: Inbox,
    refs: list[str],
    fresh: dict[tuple[str, str], tuple[Message, Thread]],
    known: dict[tuple[str, str], tuple[str, str]],
    threads: dict[str, Thread],
) -> Thread | None:
    """The thread of the nearest referenced message in this inbox, stored earlier or in this batch."""
    for ref in refs:
        key = (inbox.id, ref)
        if key in fresh:
            return fresh[key][1]
        if key in known:
            thread = threads.get(known[key][1])
            if thread is not None and thread.inbox_id == inbox.id:
                return thread
    return None


def _waiting_thread(
    key: tuple[str, str], waiting: waiting_threads.Found, threads: dict[str, Thread]
) -> Thread | None:
    """The stored thread waiting for this Message-ID in this inbox (None if it was deleted since)."""
    found = waiting.get(key)
    return threads.get(found[1]) if found is not None else None


async def store_deliveries(
    session: AsyncSession, rt: Runtime, deliveries: list[list[InboundCopy]]
) -> list[list[tuple[Message, bool]]]:
    """Group-commit handler: many deliveries (each a list of copies) through one ``store_inbound``."""
    flat = [copy for delivery in deliveries for copy in delivery]
    stored = await store_inbound(session, rt, flat)
    out: list[list[tuple[Message, bool]]] = []
    start = 0
    for delivery in deliveries:
        out.append(stored[start : start + len(delivery)])
        start += len(delivery)
    return out
