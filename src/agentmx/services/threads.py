"""Threads at organization, pod and inbox scope: lists, search, get with paged messages, labels, delete."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, FromClause, String, bindparam, delete, exists, false, select
from sqlalchemy.ext.asyncio import AsyncSession

from agentmx.db.models import Attachment, Message, MessageLabel, Thread
from agentmx.db.types import utcnow
from agentmx.errors import NotFound, Unprocessable
from agentmx.services import inboxes, pods
from agentmx.services.caller import Caller
from agentmx.services.list_conditions import Conditions, filter_params, in_fixed_labels, label_param
from agentmx.services.mailstore import (
    HIDDEN_LABELS,
    THREAD_LOCK,
    normalize_labels,
    thread_attachments,
    thread_labels,
)
from agentmx.services.messages import (
    apply_labels,
    check_label_changes,
    check_query,
    contains,
    field_highlights,
    hidden_labels,
    json_contains,
    lock_for_deletion,
    locked,
    matching,
    unreadable_labels,
)
from agentmx.services.pagination import Page, paginate

THREAD_UPDATE_MAX_MESSAGES = 100


@dataclass
class Scope:
    """Where a thread route looks: one inbox, one pod, or the caller's whole scope."""

    inbox_id: str | None = None
    pod_id: str | None = None


@dataclass
class ThreadFilters:
    labels: list[str] = field(default_factory=list)
    before: datetime | None = None
    after: datetime | None = None
    include: dict[str, bool] = field(default_factory=dict)
    senders: list[str] = field(default_factory=list)
    recipients: list[str] = field(default_factory=list)
    subject: list[str] = field(default_factory=list)

    @property
    def has_text_filters(self) -> bool:
        return bool(self.senders or self.recipients or self.subject)


@dataclass
class ThreadView:
    thread: Thread
    labels: set[str]
    attachments: list[Attachment]


async def resolve_scope(session: AsyncSession, caller: Caller, scope: Scope) -> None:
    """404 for an unknown or out-of-scope inbox/pod; 403 for an inbox key on a pod route."""
    if scope.inbox_id is not None:
        inbox = await inboxes.get_inbox(session, caller, scope.inbox_id)
        scope.inbox_id = inbox.id
    if scope.pod_id is not None:
        caller.require_pod_access(scope.pod_id)
        await pods.get_pod(session, caller, scope.pod_id)


def _scoped(stmt: Any, caller: Caller, scope: Scope) -> Any:
    """Filter on the narrowest known scope only, so the planner uses that scope's (…, timestamp) index.

    An inbox or pod id here was already checked to belong to the caller's organization.
    """
    inbox_ids = {i for i in (caller.inbox_id, scope.inbox_id) if i}
    pod_ids = {p for p in (caller.pod_id, scope.pod_id) if p}
    if len(inbox_ids) > 1 or len(pod_ids) > 1:
        return stmt.where(false())
    if inbox_ids:
        stmt = stmt.where(Thread.inbox_id == inbox_ids.pop())
        return stmt.where(Thread.pod_id == pod_ids.pop()) if pod_ids else stmt
    if pod_ids:
        return stmt.where(Thread.pod_id == pod_ids.pop())
    return stmt.where(Thread.organization_id == caller.organization_id)


def _thread_has(label_test: ColumnElement[bool], thread_id: Any = Thread.id) -> Any:
    """A message of the thread has a label passing ``label_test`` (on MessageLabel.label)."""
    return exists().where(Message.thread_id == thread_id, MessageLabel.message_pk == Message.id, label_test)


def thread_conditions(t: FromClause, caller: Caller, f: ThreadFilters) -> Conditions:
    """The list filters on ``t``, the threads table (or an alias of it); scope is applied apart."""
    labels = sorted(normalize_labels(f.labels))
    hidden = hidden_labels(caller, f.include)
    params = filter_params(labels, f.before, f.after)

    def where() -> list[Any]:
        out = [
            _thread_has(MessageLabel.label.in_([bindparam(label_param(i), type_=String)]), t.c.id)
            for i in range(len(labels))
        ]
        if hidden:
            out.append(~_thread_has(in_fixed_labels(MessageLabel.label, hidden), t.c.id))
        if f.before is not None:
            out.append(t.c.timestamp < bindparam("filter_before"))
        if f.after is not None:
            out.append(t.c.timestamp >= bindparam("filter_after"))
        out += [json_contains(t.c.senders, value) for value in f.senders]
        out += [json_contains(t.c.recipients, value) for value in f.recipients]
        out += [contains(t.c.subject, value) for value in f.subject]
        return out

    shape = (len(labels), tuple(hidden), f.before is not None, f.after is not None)
    return Conditions(where, params, None if f.has_text_filters else shape)


async def views(session: AsyncSession, threads: list[Thread]) -> list[ThreadView]:
    """Threads with their label union and attachments, in two queries for the whole page."""
    ids = [t.id for t in threads]
    labels = await thread_labels(session, ids)
    attachments = await thread_attachments(session, ids)
    return [ThreadView(t, labels[t.id], attachments[t.id]) for t in threads]


async def search_threads(
    session: AsyncSession,
    caller: Caller,
    scope: Scope,
    *,
    q: str,
    limit: int,
    page_token: str | None,
    before: datetime | None,
    after: datetime | None,
) -> Page[Thread]:
    """Threads with a visible message matching every word of ``q``; newest first."""
    words = check_query(q)
    await resolve_scope(session, caller, scope)
    match = select(Message.thread_id).where(Message.thread_id == Thread.id, *matching(words))
    stmt = _scoped(select(Thread), caller, scope).where(
        match.exists(), ~_thread_has(in_fixed_labels(MessageLabel.label, list(HIDDEN_LABELS)))
    )
    if before is not None:
        stmt = stmt.where(Thread.timestamp < before)
    if after is not None:
        stmt = stmt.where(Thread.timestamp >= after)
    return await paginate(
        session,
        stmt,
        kind=f"thread_search:{scope.inbox_id or ''}:{scope.pod_id or ''}:{q}",
        columns=[Thread.timestamp, Thread.id],
        limit=limit,
        page_token=page_token,
    )


async def search_highlights(
    session: AsyncSession, thread_ids: list[str], q: str
) -> dict[str, dict[str, Any]]:
    """Per thread, the fragments of its messages that matched ``q``, oldest message first.

    From the messages, not the thread's own fields: a hit in an older message's body has no
    fragment in the thread's preview, and the spec's keys say which fields produced the hit.
    """
    out: dict[str, dict[str, list[str]]] = {tid: {} for tid in thread_ids}
    if not thread_ids:
        return out
    rows = await session.execute(
        select(
            Message.thread_id,
            Message.from_,
            Message.to,
            Message.cc,
            Message.bcc,
            Message.subject,
            Message.text,
        )
        .where(Message.thread_id.in_(thread_ids), *matching(check_query(q)))
        .order_by(Message.timestamp, Message.id)
    )
    for thread_id, sender, to, cc, bcc, subject, text in rows.all():
        fields = {
            "from": [sender or ""],
            "recipients": [*to, *cc, *bcc],
            "subject": [subject or ""],
            "text": [text or ""],
        }
        found = out[thread_id]
        for name, fragments in field_highlights(fields, q).items():
            found[name] = list(dict.fromkeys([*found.get(name, []), *fragments]))
    return out


async def get_thread(session: AsyncSession, caller: Caller, scope: Scope, thread_id: str) -> ThreadView:
    await resolve_scope(session, caller, scope)
    thread = await session.scalar(_scoped(select(Thread), caller, scope).where(Thread.id == thread_id))
    if thread is None:
        raise NotFound("Thread not found")
    view = (await views(session, [thread]))[0]
    if view.labels & unreadable_labels(caller):
        raise NotFound("Thread not found")
    return view


async def thread_messages(
    session: AsyncSession, thread: Thread, *, limit: int, page_token: str | None
) -> Page[Message]:
    """Newest messages first across pages; each page sorted oldest first."""
    page = await paginate(
        session,
        select(Message).where(Message.thread_id == thread.id),
        kind="thread_messages:" + thread.id,
        columns=[Message.timestamp, Message.id],
        limit=limit,
        page_token=page_token,
    )
    page.items.reverse()
    return page


async def get_thread_attachment(
    session: AsyncSession, caller: Caller, scope: Scope, thread_id: str, attachment_id: str
) -> Attachment:
    view = await get_thread(session, caller, scope, thread_id)
    for attachment in view.attachments:
        if attachment.id == attachment_id:
            return attachment
    raise NotFound("Attachment not found")


async def update_thread(
    session: AsyncSession, caller: Caller, scope: Scope, thread_id: str, add: list[str], remove: list[str]
) -> ThreadView:
    add_set, remove_set = check_label_changes(add, remove)
    view = await get_thread(session, caller, scope, thread_id)
    # The thread before its messages, the lock order (messages.lock_threads_of).
    lock = select(Thread.id).where(Thread.id == view.thread.id).with_for_update(**THREAD_LOCK)
    if await session.scalar(lock) is None:  # deleted while this waited for it: not a 200 with no labels
        raise NotFound("Thread not found")
    if view.thread.message_count >= THREAD_UPDATE_MAX_MESSAGES:
        raise Unprocessable(
            f"Threads with {THREAD_UPDATE_MAX_MESSAGES} or more messages cannot be updated at once",
            fix="Update the thread's messages individually or in batches of 50.",
        )
    messages = (
        await session.scalars(locked(select(Message).where(Message.thread_id == view.thread.id)))
    ).all()
    changed = False
    for message in messages:
        changed = await apply_labels(session, message, add_set, remove_set) or changed
    if changed:
        view.thread.updated_at = utcnow()
    await session.flush()
    view.labels = (await thread_labels(session, [view.thread.id]))[view.thread.id]
    return view


async def delete_thread(session: AsyncSession, caller: Caller, scope: Scope, thread_id: str) -> None:
    view = await get_thread(session, caller, scope, thread_id)
    # The thread before its messages, the lock order (messages.lock_threads_of); FOR UPDATE, as the
    # DELETE below takes it. Messages first, a label change holding the thread deadlocked with this.
    await session.execute(select(Thread.id).where(Thread.id == view.thread.id).with_for_update())
    await lock_for_deletion(session, Message.thread_id == view.thread.id)
    await session.execute(delete(Message).where(Message.thread_id == view.thread.id))
    await session.execute(delete(Thread).where(Thread.id == view.thread.id))
