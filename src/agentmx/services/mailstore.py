"""Storing messages: the one write path for inbound (SMTP, local delivery) and outbound mail.

Blobs (raw .eml, attachment bytes) are stored with or before the rows that name them, so a
committed row always names complete bytes: small ones in the same transaction, big ones as files
fsynced before it (``blob_bytes``). ``receive`` commits before it returns: the SMTP
edge answers 250 only after that.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime
from html import unescape
from typing import Any, Literal, TypeVar

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from agentmx.db.bulk import insert_many
from agentmx.db.models import Attachment, Inbox, Message, MessageLabel, Thread, UnmatchedReference
from agentmx.db.row_locks import FOR_UPDATE, pin_inboxes
from agentmx.db.transient import table_of, transient
from agentmx.db.types import utcnow
from agentmx.errors import AgentMXError, NotFound
from agentmx.http import wire_mail
from agentmx.http.wire import iso_repeating
from agentmx.ids import new_id
from agentmx.mail import hidden_chars, stored_extracts
from agentmx.mail.idn import to_ascii_domain
from agentmx.mail.parse import ParsedMessage, parse_off_loop
from agentmx.mail.sender_auth import Verdict
from agentmx.services import blob_bytes, group_commit, hooks, waiting_threads
from agentmx.services.events import record_event
from agentmx.services.runtime import Runtime

log = logging.getLogger("agentmx.mail")

# Labels the service sets; the API refuses to add or remove them.
SYSTEM_LABELS = frozenset(
    {"received", "sent", "delivered", "bounced", "complained", "delayed", "rejected", "opened", "scheduled"}
)
# Labels that hide a message from lists unless asked for (and permitted).
HIDDEN_LABELS = ("spam", "blocked", "unauthenticated", "trash")
# Event variants for classified inbound mail, checked in this order.
RECEIVED_VARIANTS = (("blocked", ".blocked"), ("spam", ".spam"), ("unauthenticated", ".unauthenticated"))
# Webhook bodies are capped at 1 MB; bigger bodies drop text/html (API.md 3.1).
EVENT_BODY_BUDGET = 900_000
# A thread's aggregates (count, size, senders, preview, ...) are read, changed and written back: on
# PostgreSQL two transactions doing that at once lost one's changes (30 concurrent replies counted 3).
# The "change" lock (FOR NO KEY UPDATE) serialises them and still lets messages referencing the
# thread be inserted; SQLite serialises writers already and renders nothing.
THREAD_LOCK: dict[str, Any] = dict(FOR_UPDATE["change"])
T = TypeVar("T")
_INSERT_UNMATCHED = insert(table_of(UnmatchedReference))


@dataclass
class StoredBlobs:
    raw_key: str
    attachment_keys: list[str]
    inline: blob_bytes.Inline = field(default_factory=dict)  # to insert with the message's rows


@dataclass
class ReceiveResult:
    """Outcome for one envelope recipient: ``stored``, ``duplicate`` or ``rejected`` (with ``error``)."""

    status: Literal["stored", "duplicate", "rejected"]
    message: Message | None = None
    error: AgentMXError | None = None


parse = parse_off_loop  # in a thread when the message is large


async def put_blobs(rt: Runtime, raw: bytes, parsed: ParsedMessage) -> StoredBlobs:
    """Store the raw message and each attachment: big ones as files now (durably, off the event
    loop), small ones in ``inline`` for the transaction that stores the message."""
    keys, inline = await blob_bytes.put_many(rt, [raw, *(a.data for a in parsed.attachments)])
    return StoredBlobs(keys[0], keys[1:], inline)


def normalize_labels(labels: set[str] | list[str]) -> set[str]:
    return {label.strip().lower() for label in labels if label and label.strip()}


async def store_message(
    session: AsyncSession,
    rt: Runtime,
    *,
    inbox: Inbox,
    raw: bytes,
    direction: Literal["inbound", "outbound"],
    labels: set[str],
    parsed: ParsedMessage | None = None,
    bcc: list[str] | None = None,
    thread_id: str | None = None,
    blobs: StoredBlobs | None = None,
) -> Message:
    """Store one copy of ``raw`` in ``inbox`` and return it; the same Message-ID twice returns the first.

    ``blobs`` lets a caller write the blobs before opening its transaction (``put_blobs``).
    """
    message, _ = await store_message_ex(
        session,
        rt,
        inbox=inbox,
        raw=raw,
        direction=direction,
        labels=labels,
        parsed=parsed,
        bcc=bcc,
        thread_id=thread_id,
        blobs=blobs,
    )
    return message


async def store_message_ex(
    session: AsyncSession,
    rt: Runtime,
    *,
    inbox: Inbox,
    raw: bytes,
    direction: Literal["inbound", "outbound"],
    labels: set[str],
    parsed: ParsedMessage | None = None,
    bcc: list[str] | None = None,
    thread_id: str | None = None,
    blobs: StoredBlobs | None = None,
) -> tuple[Message, bool]:
    """``store_message`` that also says whether the row is new (False: duplicate Message-ID)."""
    if parsed is None:
        parsed = await parse(raw)
    message_id = message_id_for(parsed, raw, inbox)
    lookups = lookup_ids(message_id, parsed)
    wanted = {(inbox.id, mid) for mid in lookups}
    found, waiting = waiting_threads.split(
        list(
            await session.execute(
                waiting_threads.known_or_waiting(
                    lambda column: column == inbox.id, lambda column: column.in_(set(lookups))
                )
            )
        ),
        wanted,
    )
    known = {mid: ids for (_, mid), ids in found.items()}
    if message_id in known:
        existing = await session.get(Message, known[message_id][0])
        assert existing is not None
        return existing, False
    if blobs is None:
        blobs = await put_blobs(rt, raw, parsed)
    now = utcnow()
    # Pinned before its thread is locked (db/row_locks.py: inbox before thread); a deletion that held
    # it has removed the inbox by now, and its mail with it.
    if inbox.id not in await pin_inboxes(session, [inbox.id]):
        raise NotFound("Inbox not found")
    referenced = [known[m][1] for m in lookups[1:] if m in known]
    waited = waiting.get((inbox.id, message_id))
    thread = await _thread_for(session, inbox, thread_id, referenced, waited[1] if waited else None)
    is_new_thread = thread is None
    if thread is None:
        thread = new_thread(inbox, parsed.subject, now)
        session.add(thread)
    message = build_message(
        inbox,
        thread,
        message_id,
        raw,
        parsed,
        blobs,
        direction,
        labels,
        bcc if bcc is not None else parsed.bcc,
        now,
    )
    join_thread(thread, message, direction)
    if is_new_thread:
        # No ORM relationship orders the thread's INSERT before the message's: flush it first,
        # with its aggregates already set (one INSERT, no UPDATE).
        await session.flush([thread])
    session.add(message)
    await session.flush()
    if not referenced:  # waiting for the ids it answers (waiting_threads)
        await insert_many(session, _INSERT_UNMATCHED, waiting_threads.unmatched_rows(message, lookups[1:]))
    await blob_bytes.insert(session, blobs.inline)
    if direction == "inbound":
        if is_new_thread:
            labels_now, attachments_now = set(message.label_names), list(message.attachments)
        else:
            labels_now = (await thread_labels(session, [thread.id]))[thread.id]
            attachments_now = (await thread_attachments(session, [thread.id]))[thread.id]
        await record_received(session, rt, message, thread, labels_now, attachments_now)
    return message, True


def message_id_for(parsed: ParsedMessage, raw: bytes, inbox: Inbox) -> str:
    """The message's Message-ID; without one, derived from the content so an SMTP retry still dedupes."""
    return parsed.message_id or f"<{hashlib.sha256(_without_trace(raw)).hexdigest()[:32]}@{inbox.domain}>"


_TRACE = re.compile(rb"\A(?:(?:Return-Path|Received):[^\n]*\n(?:[ \t][^\n]*\n)*)+", re.IGNORECASE)


def _without_trace(raw: bytes) -> bytes:
    """The message as the client sent it: without the trace fields each delivery prepends."""
    return _TRACE.sub(b"", raw, count=1)


# References looked up for threading: the nearest ones and the first (the thread's root). Each is a
# bound parameter: a References field of 32,768 ids or more made PostgreSQL refuse the lookup (asyncpg
# takes at most 32,767), a 451 for that message forever; a batch of long ones fell back to one by one.
LOOKUP_REFERENCES = 100


def lookup_ids(message_id: str, parsed: ParsedMessage) -> list[str]:
    """Its own id (dedupe), then the ids it answers, nearest first (threading)."""
    lookups = [message_id]
    if parsed.in_reply_to:
        lookups.append(parsed.in_reply_to)
    references = parsed.references
    lookups.extend(reversed(references[-(LOOKUP_REFERENCES - 1) :]))
    if len(references) >= LOOKUP_REFERENCES:
        lookups.append(references[0])
    return lookups


def _mapped(cls: type[T], **values: Any) -> T:
    return cls(**values)


def new_thread(inbox: Inbox, subject: str | None, now: datetime, *, detached: bool = False) -> Thread:
    """``detached``: for Core INSERTs (``db.transient``), never to be added to a session."""
    build = transient if detached else _mapped
    return build(
        Thread,
        id=new_id("thd"),
        organization_id=inbox.organization_id,
        pod_id=inbox.pod_id,
        inbox_id=inbox.id,
        subject=subject,
        senders=[],
        recipients=[],
        message_count=0,
        size=0,
        timestamp=now,
        created_at=now,
        updated_at=now,
    )


def build_message(
    inbox: Inbox,
    thread: Thread,
    message_id: str,
    raw: bytes,
    parsed: ParsedMessage,
    blobs: StoredBlobs,
    direction: str,
    labels: set[str],
    bcc: list[str],
    now: datetime,
    *,
    detached: bool = False,
) -> Message:
    """``detached``: for Core INSERTs (``db.transient``), never to be added to a session."""
    build = transient if detached else _mapped
    return build(
        Message,
        id=new_id("msg"),
        message_id=message_id,
        organization_id=inbox.organization_id,
        pod_id=inbox.pod_id,
        inbox_id=inbox.id,
        thread_id=thread.id,
        direction=direction,
        timestamp=now,
        from_=parsed.from_,
        to=parsed.to,
        cc=parsed.cc,
        bcc=list(bcc),
        reply_to=parsed.reply_to,
        subject=parsed.subject,
        preview=parsed.preview,
        text=parsed.text,
        html=parsed.html,
        extracted_text=stored_extracts.for_storage(parsed.extracted_text, parsed.text),
        extracted_html=stored_extracts.for_storage(parsed.extracted_html, parsed.html),
        in_reply_to=parsed.in_reply_to,
        references=parsed.references,
        headers=parsed.headers,
        size=len(raw),
        blob_key=blobs.raw_key,
        created_at=now,
        updated_at=now,
        labels=[build(MessageLabel, label=label) for label in sorted(normalize_labels(labels))],
        attachments=[
            build(
                Attachment,
                id=new_id("att"),
                position=i,
                filename=a.filename,
                content_type=a.content_type,
                content_disposition=a.disposition,
                content_id=a.content_id,
                size=len(a.data),
                blob_key=key,
            )
            for i, (a, key) in enumerate(zip(parsed.attachments, blobs.attachment_keys, strict=True))
        ],
    )


async def _thread_for(
    session: AsyncSession, inbox: Inbox, thread_id: str | None, referenced: list[str], waiting: str | None
) -> Thread | None:
    """An explicit thread id wins; else the thread of the nearest referenced message in this inbox;
    else the thread waiting for this message (``waiting_threads``).

    The thread is read locked (``THREAD_LOCK``): its aggregates are about to change."""
    for candidate in ([thread_id] if thread_id else []) + referenced + ([waiting] if waiting else []):
        thread = await session.get(Thread, candidate, with_for_update=THREAD_LOCK, populate_existing=True)
        if thread is not None and thread.inbox_id == inbox.id:
            return thread
    return None


# Distinct senders and recipients a thread lists, first come first kept: a sender can put thousands of
# addresses in each message's To, and every message of the thread would add its own.
THREAD_ADDRESSES_MAX = 1000


def join_thread(thread: Thread, message: Message, direction: str) -> None:
    extra = message.bcc if direction == "outbound" else []
    thread.senders = _joined(thread.senders, [message.from_] if message.from_ else [])
    thread.recipients = _joined(thread.recipients, [*message.to, *message.cc, *extra])
    if thread.subject is None:
        thread.subject = message.subject
    thread.message_count = (thread.message_count or 0) + 1
    thread.size = (thread.size or 0) + message.size
    if thread.message_count == 1 or message.timestamp >= thread.timestamp:
        thread.timestamp = message.timestamp
        thread.last_message_id = message.message_id
        thread.preview = message.preview
    if direction == "inbound":
        thread.received_timestamp = message.timestamp
    else:
        thread.sent_timestamp = message.timestamp
    thread.updated_at = message.updated_at


def _joined(listed: list[str] | None, new: list[str]) -> list[str]:
    out = list(listed or [])
    seen = set(out)  # a set: a To of 60,000 addresses took minutes of list scans
    for address in new:
        if len(out) >= THREAD_ADDRESSES_MAX:
            break
        if address not in seen:
            seen.add(address)
            out.append(address)
    return out


async def thread_labels(session: AsyncSession, thread_ids: list[str]) -> dict[str, set[str]]:
    """Union of message labels per thread, in one query."""
    out: dict[str, set[str]] = {tid: set() for tid in thread_ids}
    if not thread_ids:
        return out
    rows = await session.execute(
        select(Message.thread_id, MessageLabel.label)
        .join(MessageLabel, MessageLabel.message_pk == Message.id)
        .where(Message.thread_id.in_(thread_ids))
        .distinct()
    )
    for tid, label in rows.all():
        out[tid].add(label)
    return out


async def thread_attachments(session: AsyncSession, thread_ids: list[str]) -> dict[str, list[Attachment]]:
    out: dict[str, list[Attachment]] = {tid: [] for tid in thread_ids}
    if not thread_ids:
        return out
    rows = await session.execute(
        select(Message.thread_id, Attachment)
        .join(Attachment, Attachment.message_pk == Message.id)
        .where(Message.thread_id.in_(thread_ids))
        .order_by(Message.timestamp, Message.id, Attachment.position)
    )
    for tid, att in rows.all():
        out[tid].append(att)
    return out


async def record_received(
    session: AsyncSession,
    rt: Runtime,
    message: Message,
    thread: Thread,
    labels: set[str],
    attachments: list[Attachment],
) -> None:
    """``labels``/``attachments``: the thread's, with this message in it."""
    names = message.label_names  # a new list on each read
    suffix = next((s for label, s in RECEIVED_VARIANTS if label in names), "")
    time = iso_repeating()
    body = wire_mail.message_document(message, names, message.attachments, True, time)
    if len(body.get("text") or "") + len(body.get("html") or "") > EVENT_BODY_BUDGET:
        body.pop("text", None)
        body.pop("html", None)
    await record_event(
        session,
        rt,
        event_type="message.received" + suffix,
        organization_id=message.organization_id,
        pod_id=message.pod_id,
        inbox_id=message.inbox_id,
        payload={"message": body, "thread": wire_mail.thread_item(thread, labels, attachments, time)},
    )


def envelope_recipient(rt: Runtime, address: str) -> str:
    """An envelope recipient as the inbox address it names: lower case, the domain in A-labels
    (an SMTPUTF8 client may write it in Unicode, RFC 6531 3.2); ``Postmaster`` alone, which
    RFC 5321 4.5.1 says must be taken, is postmaster at the default domain (an inbox the operator
    makes: without one it is refused, as no 250 is given for mail nobody stores)."""
    address = address.strip().lower()
    if address == "postmaster":
        return f"postmaster@{rt.settings.domain}"
    local, at, domain = address.rpartition("@")
    if at and not domain.isascii():
        wire = to_ascii_domain(domain)
        if wire is not None:  # else not a domain name: no inbox has it
            return f"{local}@{wire}"
    return address


async def check_recipient(session: AsyncSession, rt: Runtime, address: str) -> Inbox:
    """The active local inbox for an envelope recipient, or NotFound (SMTP 550 5.1.1)."""
    inbox = await session.get(Inbox, envelope_recipient(rt, address))
    if inbox is None or inbox.status != "active":
        raise NotFound(f"No such inbox: {address}")
    await hooks.run_all(hooks.recipient_checks, session, rt, inbox)
    return inbox


async def recipient_inbox(rt: Runtime, address: str) -> Inbox:
    """``check_recipient`` through the runtime's ingest cache (RCPT and DATA both ask, per message).

    The Inbox is detached and shared between sessions: read its attributes, never add it to one.
    Only found inboxes are cached: an inbox created by another process sharing the database must
    not get a permanent 550 for the cache's lifetime.
    """
    key = ("rcpt", envelope_recipient(rt, address))
    cached = rt.ingest_cache.get(key)
    if isinstance(cached, Inbox):
        return cached
    generation = rt.ingest_cache.generation
    async with rt.db.read() as session:
        inbox = await check_recipient(session, rt, address)
    rt.ingest_cache.put(key, inbox, generation)
    return inbox


AUTH_HEADERS = ("dkim-signature", "authentication-results", "arc-authentication-results", "received-spf")


def _auth_labels(rt: Runtime, parsed: ParsedMessage, sender: Verdict | None) -> set[str]:
    """``spam`` for mail that failed a DMARC policy of quarantine or reject (``Verdict.spam``);
    ``unauthenticated`` (opt-in setting) for mail whose From domain the sender checks did not verify,
    or, when it was not checked, that carries no SPF/DKIM evidence at all.

    Local delivery of an outbound message passes a verified verdict (not its return path: anybody may
    write ``MAIL FROM:<bounces+…>``).
    """
    spam = {"spam"} if sender is not None and sender.spam else set()
    if not rt.settings.inbound_label_unauthenticated:
        return spam
    if sender is not None:
        return spam if sender.verified else spam | {"unauthenticated"}
    present = {name.lower() for name in parsed.headers}
    return set() if present & set(AUTH_HEADERS) else {"unauthenticated"}


def _content_labels(parsed: ParsedMessage) -> set[str]:
    """``hidden-characters`` for text a reader does not see and a model reads (mail.hidden_chars)."""
    html = parsed.html
    if html is not None and hidden_chars.references_hidden(html):  # reaches whoever turns it into text
        html = unescape(html)
    texts = [parsed.subject, parsed.from_, parsed.text, html, *(a.filename for a in parsed.attachments)]
    return {hidden_chars.LABEL} if hidden_chars.carries_hidden(texts) else set()


async def receive(
    rt: Runtime,
    raw: bytes,
    mail_from: str,
    rcpt_tos: list[str],
    parsed: ParsedMessage | None = None,
    sender: Verdict | None = None,
) -> dict[str, ReceiveResult]:
    """Deliver one copy per local recipient inbox, all in one transaction committed before returning.

    ``parsed`` is ``raw`` parsed already (by an SMTP front-end process), else it is parsed here.
    ``sender``: the verdict of the sender checks (``mail.sender_auth``), None when not checked.

    Recipient checks and classification only read, so they run before the write transaction
    (on SQLite the write lock is then held just for the inserts). The copies are committed
    together, possibly with other concurrent deliveries (group_commit). Raises on storage failure
    (nothing committed); the caller keeps custody (SMTP 451).
    """
    if parsed is None:
        parsed = await parse(raw)
    results: dict[str, ReceiveResult] = {}
    accepted: list[tuple[str, Inbox, set[str]]] = []
    content_labels = _content_labels(parsed)
    for rcpt in rcpt_tos:
        address = envelope_recipient(rt, rcpt)
        if address in results or any(a == address for a, _, _ in accepted):
            continue
        try:
            inbox = await recipient_inbox(rt, address)
        except AgentMXError as exc:
            results[address] = ReceiveResult("rejected", error=exc)
            continue
        labels = {"received", "unread"} | _auth_labels(rt, parsed, sender) | content_labels
        for labeler in hooks.inbound_labelers:
            labels |= await labeler(rt, inbox, mail_from, parsed.from_, parsed.in_reply_to)
        accepted.append((address, inbox, labels))
    if not accepted:
        return results
    blobs = await put_blobs(rt, raw, parsed)
    from agentmx.services import inbound_batch  # noqa: PLC0415 (it builds on this module)

    committer = group_commit.committer(rt, inbound_batch.store_deliveries)
    while True:
        copies = [
            inbound_batch.InboundCopy(inbox, raw, parsed, blobs, labels) for _, inbox, labels in accepted
        ]
        try:
            stored = await committer.submit(copies)
            break
        except inbound_batch.InboxesGone as exc:
            # An inbox deleted since its check (or whose deletion this process has not heard of yet).
            # That recipient is refused as at RCPT (550 5.1.1, not a 451 the sender would retry for
            # nothing); the others' copies are stored without it. The next RCPT reads the inbox again.
            rt.ingest_cache.clear()
            for address, inbox, _ in accepted:
                if inbox.id in exc.inbox_ids:
                    results[address] = ReceiveResult("rejected", error=NotFound(f"No such inbox: {address}"))
            accepted = [a for a in accepted if a[1].id not in exc.inbox_ids]
            if not accepted:
                return results
    for (address, _, _), (message, fresh) in zip(accepted, stored, strict=True):
        results[address] = ReceiveResult("stored" if fresh else "duplicate", message=message)
    return results
