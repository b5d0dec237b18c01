"""Reading and labelling messages of one inbox: lists, search, get, label changes, delete."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    FromClause,
    Select,
    String,
    Text,
    bindparam,
    cast,
    delete,
    exists,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer, load_only

from agentmx.db import text_match
from agentmx.db.models import Attachment, Inbox, Message, MessageLabel, Thread
from agentmx.db.types import utcnow
from agentmx.errors import NotFound, ValidationFailed
from agentmx.mail import hidden_chars
from agentmx.services import inbox_events, limits
from agentmx.services.caller import Caller
from agentmx.services.list_conditions import Conditions, filter_params, in_fixed_labels, label_param
from agentmx.services.mailstore import (
    HIDDEN_LABELS,
    SYSTEM_LABELS,
    THREAD_LOCK,
    join_thread,
    normalize_labels,
)
from agentmx.services.pagination import Page, paginate

BATCH_GET_MAX = 500
# Labels the server sets or acts on (received, sent, unread, delivery outcomes, spam, trash...): not
# counted in limits.MAX_LABELS, which caps the labels clients give a message for their own use.
STATE_LABELS = SYSTEM_LABELS | {"unread", hidden_chars.LABEL, *HIDDEN_LABELS}
# Search rows (MessageItem) carry no bodies or headers: do not read them (the highlights read text).
SEARCH_DEFERRED = [
    defer(Message.html, raiseload=True),
    defer(Message.extracted_text, raiseload=True),
    defer(Message.extracted_html, raiseload=True),
    defer(Message.headers, raiseload=True),
]
BATCH_UPDATE_MAX = 50
# A message's bodies and headers, left out where only its envelope is read (a raw or attachment link):
# loaded whole, 50 link requests at once for a 9 MB mail took 500 MB.
BODIES_DEFERRED = [*SEARCH_DEFERRED, defer(Message.text, raiseload=True)]
# What mailstore.join_thread reads of a message.
THREAD_MEMBER_FIELDS = (
    Message.direction,
    Message.timestamp,
    Message.size,
    Message.message_id,
    Message.preview,
    Message.subject,
    Message.from_,
    Message.to,
    Message.cc,
    Message.bcc,
    Message.updated_at,
)


@dataclass
class MessageFilters:
    labels: list[str] = field(default_factory=list)
    before: datetime | None = None
    after: datetime | None = None
    include: dict[str, bool] = field(default_factory=dict)  # spam/blocked/unauthenticated/trash
    from_: list[str] = field(default_factory=list)
    to: list[str] = field(default_factory=list)
    subject: list[str] = field(default_factory=list)

    @property
    def has_text_filters(self) -> bool:
        return bool(self.from_ or self.to or self.subject)


def hidden_labels(caller: Caller, include: dict[str, bool] | None = None) -> list[str]:
    """Classification labels still hidden: not asked for, or asked for without the read permission."""
    include = include or {}
    return [x for x in HIDDEN_LABELS if not (include.get(x) and caller.can(f"label_{x}_read"))]


def unreadable_labels(caller: Caller) -> set[str]:
    """Labels that make a message invisible even on direct GET (no label_X_read permission)."""
    return {x for x in HIDDEN_LABELS if not caller.can(f"label_{x}_read")}


def contains(column: Any, value: str) -> Any:
    # ``value``, not its lower case, decides: the Kelvin sign lowers to an ASCII 'k'.
    return text_match.contains(column, value.lower(), looked_for=value)


def json_contains(column: Any, value: str) -> Any:
    """Substring of a JSON list column's text: raw UTF-8, or \\uXXXX escapes (rows written before orjson), so try both."""
    text = cast(column, Text)
    lowered = value.lower()
    escaped = json.dumps(lowered)[1:-1]
    if escaped == lowered:
        return text_match.contains(text, lowered, looked_for=value)
    return or_(
        text_match.contains(text, lowered, looked_for=value),
        text_match.contains(text, escaped, looked_for=value),
    )


def has_label(label: str | BindParameter[str], message_pk: Any = Message.id) -> Any:
    return exists().where(MessageLabel.message_pk == message_pk, MessageLabel.label == label)


def without_labels(labels: list[str], message_pk: Any = Message.id) -> Any:
    return ~exists().where(MessageLabel.message_pk == message_pk, in_fixed_labels(MessageLabel.label, labels))


def message_conditions(m: FromClause, caller: Caller, f: MessageFilters) -> Conditions:
    """The list filters on ``m``, the messages table (or an alias of it); the inbox filter is added apart."""
    labels = sorted(normalize_labels(f.labels))
    hidden = hidden_labels(caller, f.include)
    params = filter_params(labels, f.before, f.after)

    def where() -> list[Any]:
        out = [has_label(bindparam(label_param(i), type_=String), m.c.id) for i in range(len(labels))]
        if hidden:
            out.append(without_labels(hidden, m.c.id))
        if f.before is not None:
            out.append(m.c.timestamp < bindparam("filter_before"))
        if f.after is not None:
            out.append(m.c.timestamp >= bindparam("filter_after"))
        out += [contains(m.c.from_addr, value) for value in f.from_]
        out += [
            or_(json_contains(m.c.to, value), json_contains(m.c.cc, value), json_contains(m.c.bcc, value))
            for value in f.to
        ]
        out += [contains(m.c.subject, value) for value in f.subject]
        return out

    shape = (len(labels), tuple(hidden), f.before is not None, f.after is not None)
    return Conditions(where, params, None if f.has_text_filters else shape)


def matching(words: list[str]) -> list[Any]:
    """A message matching every word, each in its sender, To, Cc, Bcc, subject or body (searches of
    messages and of threads). Bcc is stored only on the sender's own copy, which shows it: the
    inbox searched knows those addresses, and the `to` / `recipients` list filters match them too."""
    return [
        or_(
            contains(Message.from_, word),
            json_contains(Message.to, word),
            json_contains(Message.cc, word),
            json_contains(Message.bcc, word),
            contains(Message.subject, word),
            contains(Message.text, word),
        )
        for word in words
    ]


async def search_messages(
    session: AsyncSession,
    caller: Caller,
    inbox: Inbox,
    *,
    q: str,
    limit: int,
    page_token: str | None,
    before: datetime | None,
    after: datetime | None,
) -> Page[Message]:
    """Every word of ``q`` must occur in the sender, recipients, subject or body. Newest first."""
    words = check_query(q)
    stmt = (
        select(Message)
        .options(*SEARCH_DEFERRED)
        .where(Message.inbox_id == inbox.id, without_labels(list(HIDDEN_LABELS)))
    )
    if before is not None:
        stmt = stmt.where(Message.timestamp < before)
    if after is not None:
        stmt = stmt.where(Message.timestamp >= after)
    stmt = stmt.where(*matching(words))
    return await paginate(
        session,
        stmt,
        kind="message_search:" + inbox.id + ":" + q,
        columns=[Message.timestamp, Message.id],
        limit=limit,
        page_token=page_token,
    )


def check_query(q: str | None) -> list[str]:
    q = (q or "").strip()
    if not q or len(q) > 256:
        raise ValidationFailed(
            "q must be 1-256 characters", [{"path": ["q"], "message": "1..256 characters"}]
        )
    return q.split()


def highlights(message: Message, q: str) -> dict[str, list[str]]:
    """Matched fragments with ``**`` around each hit, per field that matched."""
    return field_highlights(
        {
            "from": [message.from_ or ""],
            "recipients": [*message.to, *message.cc, *message.bcc],
            "subject": [message.subject or ""],
            "text": [message.text or ""],
        },
        q,
    )


def field_highlights(fields: dict[str, list[str]], q: str) -> dict[str, list[str]]:
    words = [w.lower() for w in q.split() if w]
    out: dict[str, list[str]] = {}
    for name, values in fields.items():
        hits = [frag for v in values if (frag := _fragment(v, words))]
        if hits:
            out[name] = hits
    return out


def _fragment(value: str, words: list[str]) -> str | None:
    lowered = value.lower()
    positions = [(lowered.find(w), w) for w in words if w and w in lowered]
    if not positions:
        return None
    start = max(0, min(p for p, _ in positions) - 60)
    snippet = value[start : start + 200]
    for word in sorted({w for _, w in positions}, key=len, reverse=True):
        idx = snippet.lower().find(word)
        if idx >= 0:
            snippet = (
                snippet[:idx] + "**" + snippet[idx : idx + len(word)] + "**" + snippet[idx + len(word) :]
            )
    return " ".join(snippet.split())


def message_id_candidates(message_id: str) -> list[str]:
    message_id = message_id.strip()
    if message_id.startswith("<"):
        return [message_id]
    return [message_id, f"<{message_id}>"]


def locked(stmt: Select[Message]) -> Select[Message]:
    """For a label change: the labels it reads must be the ones it changes. Without the lock two
    requests adding one label both inserted it on PostgreSQL (the second failed with a 500), and
    two removing it both logged a removal. In id order, so that batches cannot deadlock; NO KEY
    UPDATE, so that rows referencing the message are not held up."""
    return stmt.order_by(Message.id).with_for_update(key_share=True).execution_options(populate_existing=True)


async def lock_for_deletion(session: AsyncSession, *where: ColumnElement[bool]) -> None:
    """Lock the messages a DELETE is about to remove, in id order. The DELETE alone locks them in the
    order it scans them (by timestamp), which is not id order: against a label change holding one
    and waiting for another, that was a deadlock."""
    await session.execute(select(Message.id).where(*where).order_by(Message.id).with_for_update())


async def get_message(
    session: AsyncSession,
    caller: Caller,
    inbox: Inbox,
    message_id: str,
    *,
    lock: bool = False,
    bodies: bool = True,
) -> Message:
    """``bodies=False``: text, html and headers not loaded (raise if read)."""
    stmt = select(Message).where(
        Message.inbox_id == inbox.id, Message.message_id.in_(message_id_candidates(message_id))
    )
    if not bodies:
        stmt = stmt.options(*BODIES_DEFERRED)
    message = await session.scalar(locked(stmt) if lock else stmt)
    if message is None or set(message.label_names) & unreadable_labels(caller):
        raise NotFound("Message not found")
    return message


async def get_attachment(session: AsyncSession, message: Message, attachment_id: str) -> Attachment:
    for attachment in message.attachments:
        if attachment.id == attachment_id:
            return attachment
    raise NotFound("Attachment not found")


def check_label_changes(add: list[str], remove: list[str]) -> tuple[set[str], set[str]]:
    limits.check_count(add, limits.MAX_LABELS, "add_labels", "labels")
    limits.check_count(remove, limits.MAX_LABELS, "remove_labels", "labels")
    add_set, remove_set = normalize_labels(add), normalize_labels(remove)
    system = sorted((add_set | remove_set) & SYSTEM_LABELS)
    if system:
        raise ValidationFailed(
            f"System labels cannot be added or removed: {', '.join(system)}",
            [
                {
                    "path": ["add_labels" if system[0] in add_set else "remove_labels"],
                    "message": "system label",
                }
            ],
        )
    for label in add_set | remove_set:
        if len(label) > 256:
            raise ValidationFailed(
                "Labels are at most 256 characters", [{"path": ["labels"], "message": "too long"}]
            )
    return add_set - remove_set, remove_set


async def apply_labels(session: AsyncSession, message: Message, add: set[str], remove: set[str]) -> bool:
    """Change one message's labels and log each change; True when anything changed."""
    current = {label.label: label for label in message.labels}
    # Only own labels' growth is refused: a message past the cap (from before it) may still shed
    # them, and still take the server's (a delivery outcome).
    if add - current.keys() - STATE_LABELS:
        own = (current.keys() - remove | add) - STATE_LABELS
        limits.check_count(own, limits.MAX_LABELS, "add_labels", "labels of its own on a message")
    changed = False
    for label in sorted(add - current.keys()):
        message.labels.append(MessageLabel(label=label))
        await inbox_events.record_label_change(session, message, label, True)
        changed = True
    for label in sorted(remove & current.keys()):
        message.labels.remove(current[label])
        await inbox_events.record_label_change(session, message, label, False)
        changed = True
    if changed:
        message.labels.sort(key=lambda lbl: lbl.label)
        message.updated_at = utcnow()
    return changed


async def update_message(
    session: AsyncSession, caller: Caller, inbox: Inbox, message_id: str, add: list[str], remove: list[str]
) -> Message:
    add_set, remove_set = check_label_changes(add, remove)
    await lock_threads_of(session, _named(inbox, message_id_candidates(message_id)))
    message = await get_message(session, caller, inbox, message_id, lock=True)
    if await apply_labels(session, message, add_set, remove_set):
        await touch_threads(session, [message.thread_id])
    return message


def _named(inbox: Inbox, message_ids: Any) -> ColumnElement[bool]:
    return (Message.inbox_id == inbox.id) & Message.message_id.in_(message_ids)


async def lock_threads_of(session: AsyncSession, *where: ColumnElement[bool]) -> None:
    """Lock the threads of the messages ``where`` finds, in id order, before a label change locks
    the messages: the lock order is a thread, then its messages (db/row_locks), as a reply or an
    own copy coming back takes them; the other way round two such transactions could deadlock."""
    threads = select(Message.thread_id).where(*where)
    await session.execute(
        select(Thread.id).where(Thread.id.in_(threads)).order_by(Thread.id).with_for_update(**THREAD_LOCK)
    )


async def touch_threads(session: AsyncSession, thread_ids: list[str]) -> None:
    """A thread's labels are its messages' union, so a message's label change updates its thread
    too (``updated_at``, as a thread PATCH sets it). Their rows are locked (lock_threads_of)."""
    await session.execute(
        update(Thread)
        .where(Thread.id.in_(sorted(set(thread_ids))))
        .values(updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )


def check_ids(ids: list[str], maximum: int) -> None:
    if not ids:
        raise ValidationFailed(
            "message_ids must not be empty", [{"path": ["message_ids"], "message": "empty"}]
        )
    if len(ids) > maximum:
        raise ValidationFailed(
            f"At most {maximum} message_ids per request",
            [{"path": ["message_ids"], "message": f"max {maximum}"}],
        )
    if len(set(ids)) != len(ids):
        raise ValidationFailed(
            "message_ids contains duplicates", [{"path": ["message_ids"], "message": "duplicates"}]
        )


async def batch_get(
    session: AsyncSession, caller: Caller, inbox: Inbox, ids: list[str], *, lock: bool = False
) -> list[Message]:
    """Found, visible messages in request order; unknown ids are skipped."""
    check_ids(ids, BATCH_GET_MAX)
    wanted = {c for mid in ids for c in message_id_candidates(mid)}
    stmt = select(Message).where(Message.inbox_id == inbox.id, Message.message_id.in_(wanted))
    rows = (await session.scalars(locked(stmt) if lock else stmt)).all()
    by_id = {m.message_id: m for m in rows}
    hidden = unreadable_labels(caller)
    out: list[Message] = []
    for mid in ids:
        found = next((by_id[c] for c in message_id_candidates(mid) if c in by_id), None)
        if found is not None and not set(found.label_names) & hidden:
            out.append(found)
    return out


async def batch_update(
    session: AsyncSession, caller: Caller, inbox: Inbox, ids: list[str], add: list[str], remove: list[str]
) -> list[Message]:
    check_ids(ids, BATCH_UPDATE_MAX)
    if not add and not remove:
        raise ValidationFailed(
            "Provide add_labels or remove_labels", [{"path": ["add_labels"], "message": "nothing to change"}]
        )
    add_set, remove_set = check_label_changes(add, remove)
    await lock_threads_of(session, _named(inbox, {c for mid in ids for c in message_id_candidates(mid)}))
    messages = await batch_get(session, caller, inbox, ids, lock=True)
    changed = [m.thread_id for m in messages if await apply_labels(session, m, add_set, remove_set)]
    if changed:
        await touch_threads(session, changed)
    await session.flush()
    return messages


async def delete_message(session: AsyncSession, caller: Caller, inbox: Inbox, message_id: str) -> None:
    message = await get_message(session, caller, inbox, message_id)
    thread_id = message.thread_id
    # The thread before the message (lock_threads_of): a label change holding the thread and
    # waiting for this message, while this waited for the thread, was a deadlock (a 503).
    await lock_threads_of(session, Message.id == message.id)
    await session.execute(delete(Message).where(Message.id == message.id))
    session.expunge(message)
    await refresh_thread(session, thread_id)


async def refresh_thread(session: AsyncSession, thread_id: str) -> None:
    """Recompute a thread's aggregates from its remaining messages; delete it when none remain.

    The remaining messages join the emptied thread again, oldest first, by the rule that built it
    (mailstore.join_thread): a rule of its own here dropped the Bcc of sent mail from recipients.
    """
    thread = await session.get(Thread, thread_id, with_for_update=THREAD_LOCK, populate_existing=True)
    if thread is None:
        return
    remaining = (
        await session.scalars(
            select(Message)
            .options(load_only(*THREAD_MEMBER_FIELDS))
            .where(Message.thread_id == thread_id)
            .order_by(Message.timestamp, Message.id)
        )
    ).all()
    if not remaining:
        await session.delete(thread)
        return
    thread.senders, thread.recipients, thread.subject = [], [], None  # the first message left sets it
    thread.message_count, thread.size = 0, 0
    thread.received_timestamp = thread.sent_timestamp = None
    for message in remaining:
        join_thread(thread, message, message.direction)
    thread.updated_at = utcnow()
