"""GET one message and GET one thread in SQLAlchemy Core: the hottest reads, without the ORM.

Through the ORM a GET message was five statements (inbox, message, two selectin loads, …) and about
3 ms of CPU, of which the database took 0.1 ms. Here a message is one statement (inbox check,
message, its labels and attachments aggregated as JSON), and so is a thread's first page (the thread
joined to its newest messages; pod routes check the pod first). Later pages, and labels of threads
longer than a page, take a few more. The rules are those of messages.get_message and
threads.get_thread (scope, hidden labels, the same 404s, in the same order); the rows carry the ORM
attribute names so http/wire_mail shapes them like ORM objects.
"""

from __future__ import annotations

import functools
from collections import namedtuple
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import JSON, Row, TextualSelect, bindparam, column, text
from sqlalchemy.ext.asyncio import AsyncConnection

from agentmx.db.driver_reads import DriverConnection
from agentmx.db.models import Message, Thread
from agentmx.db.types import UTCDateTime, driver_time
from agentmx.errors import NotFound
from agentmx.services.caller import Caller
from agentmx.services.inboxes import inbox_is_visible, inbox_key
from agentmx.services.messages import message_id_candidates, unreadable_labels
from agentmx.services.pagination import Page, decode_token, encode_token
from agentmx.services.pods import pod_is_visible
from agentmx.services.threads import Scope

MESSAGE_ATTRS = (
    "id",
    "inbox_id",
    "thread_id",
    "message_id",
    "timestamp",
    "from_",
    "to",
    "cc",
    "bcc",
    "reply_to",
    "subject",
    "preview",
    "text",
    "html",
    "extracted_text",
    "extracted_html",
    "in_reply_to",
    "references",
    "headers",
    "size",
    "created_at",
    "updated_at",
)
THREAD_ATTRS = (
    "id",
    "inbox_id",
    "subject",
    "preview",
    "senders",
    "recipients",
    "last_message_id",
    "message_count",
    "size",
    "timestamp",
    "received_timestamp",
    "sent_timestamp",
    "created_at",
    "updated_at",
)
THREAD_PREFIX = "t_"
ThreadRow = namedtuple("ThreadRow", THREAD_ATTRS)  # type: ignore[misc]  # the thread part of a joined row
ATTACHMENT_FIELDS = "position, id, filename, content_type, content_disposition, content_id, size"


# GET message and GET thread run on the driver's connection (db/driver_reads); either kind works.
ReadConnection = AsyncConnection | DriverConnection


class AttachmentRecord(NamedTuple):
    """What the wire shows of an attachment, with Attachment's attribute names."""

    position: int
    id: str
    filename: str | None
    content_type: str | None
    content_disposition: str | None
    content_id: str | None
    size: int


@dataclass(slots=True)
class MessageRecord:
    row: Row[Any]  # Message's columns under its attribute names
    labels: list[str]
    attachments: list[AttachmentRecord]


@dataclass(slots=True)
class ThreadRecord:
    row: Any  # Thread's columns under its attribute names (a Row or a ThreadRow)
    labels: set[str]
    attachments: list[AttachmentRecord]
    messages: Page[MessageRecord]


def _columns(model: Any, attrs: tuple[str, ...], alias: str, prefix: str = "") -> tuple[str, list[Any]]:
    """SELECT list of ``model``'s columns renamed to (prefixed) attribute names, and their result types.

    Times as the driver reads them (db/types.driver_time): the documents leave them to wire.json_response.
    """
    mapped = [(prefix + attr, model.__mapper__.attrs[attr].columns[0]) for attr in attrs]
    sql = ", ".join(f'{alias}."{col.name}" AS "{name}"' for name, col in mapped)
    return sql, [column(name, driver_time(col.type)) for name, col in mapped]


def message_aggregates(dialect: str) -> tuple[str, str]:
    """Per-message labels and attachments as JSON arrays (SQLite 3.40 cannot order inside them)."""
    if dialect == "postgresql":
        return (
            "(SELECT json_agg(label ORDER BY label) FROM message_labels WHERE message_pk = m.id)",
            f"(SELECT json_agg(json_build_array({ATTACHMENT_FIELDS}) ORDER BY position)"
            " FROM attachments WHERE message_pk = m.id)",
        )
    return (
        "(SELECT json_group_array(label) FROM message_labels WHERE message_pk = m.id)",
        f"(SELECT json_group_array(json_array({ATTACHMENT_FIELDS})) FROM attachments WHERE message_pk = m.id)",
    )


class _Statements:
    """The hot statements of one dialect, built once."""

    def __init__(self, dialect: str) -> None:
        self.sort_in_python = dialect != "postgresql"
        labels_sql, attachments_sql = message_aggregates(dialect)
        msg_sql, msg_types = _columns(Message, MESSAGE_ATTRS, "m")
        aggregated = [column("labels", JSON()), column("attachments", JSON())]
        self.message = text(
            f"SELECT i.organization_id AS inbox_org, i.pod_id AS inbox_pod, {msg_sql},"
            f" {labels_sql} AS labels, {attachments_sql} AS attachments"
            " FROM inboxes i LEFT JOIN messages m ON m.inbox_id = i.id AND m.message_id IN (:mid1, :mid2)"
            " WHERE i.id = :inbox_id LIMIT 1"
        ).columns(column("inbox_org"), column("inbox_pod"), *msg_types, *aggregated)
        page_sql = (
            f"SELECT {msg_sql}, {labels_sql} AS labels, {attachments_sql} AS attachments"
            " FROM messages m WHERE m.thread_id = :thread_id{after}"
            ' ORDER BY m."timestamp" DESC, m.id DESC LIMIT :limit'
        )
        self.next_page = (
            text(page_sql.format(after=' AND (m."timestamp", m.id) < (:after_ts, :after_id)'))
            .bindparams(bindparam("after_ts", type_=UTCDateTime()))
            .columns(*msg_types, *aggregated)
        )
        thread_sql, self.thread_types = _columns(Thread, THREAD_ATTRS, "t")
        self.thread_select = f"SELECT {thread_sql} FROM threads t WHERE t.id = :thread_id"
        self.threads: dict[str, TextualSelect] = {}
        # The thread and its newest messages in one statement; thread columns prefixed "t_".
        prefixed_sql, prefixed_types = _columns(Thread, THREAD_ATTRS, "t", THREAD_PREFIX)
        self.thread_page_select = (
            f"SELECT {prefixed_sql}, {msg_sql}, {labels_sql} AS labels, {attachments_sql} AS attachments"
            " FROM threads t LEFT JOIN messages m ON m.thread_id = t.id WHERE t.id = :thread_id{scope}"
            ' ORDER BY m."timestamp" DESC, m.id DESC LIMIT :limit'
        )
        self.thread_page_types = [*prefixed_types, *msg_types, *aggregated]
        self.thread_pages: dict[str, TextualSelect] = {}
        # Inbox routes: the inbox check joins in too (an unknown thread leaves one row, t_id NULL).
        self.inbox_thread_page_select = (
            f"SELECT i.organization_id AS inbox_org, i.pod_id AS inbox_pod, {prefixed_sql}, {msg_sql},"
            f" {labels_sql} AS labels, {attachments_sql} AS attachments"
            " FROM inboxes i LEFT JOIN threads t ON t.id = :thread_id AND t.inbox_id = i.id{scope}"
            " LEFT JOIN messages m ON m.thread_id = t.id"
            ' WHERE i.id = :inbox_id ORDER BY m."timestamp" DESC, m.id DESC LIMIT :limit'
        )
        self.inbox_thread_page_types = [column("inbox_org"), column("inbox_pod"), *self.thread_page_types]
        self.inbox = text("SELECT organization_id, pod_id FROM inboxes WHERE id = :inbox_id")
        self.pod = text("SELECT organization_id FROM pods WHERE id = :pod_id")
        self.thread_labels = text(
            "SELECT DISTINCT ml.label FROM message_labels ml JOIN messages m ON ml.message_pk = m.id"
            " WHERE m.thread_id = :thread_id"
        )
        self.thread_attachments = text(
            f"SELECT {', '.join('a.' + f.strip() for f in ATTACHMENT_FIELDS.split(','))}"
            " FROM attachments a JOIN messages m ON a.message_pk = m.id"
            ' WHERE m.thread_id = :thread_id ORDER BY m."timestamp", m.id, a.position'
        )

    def thread(self, scope_filter: str) -> TextualSelect:
        stmt = self.threads.get(scope_filter)
        if stmt is None:
            stmt = text(self.thread_select + scope_filter).columns(*self.thread_types)
            self.threads[scope_filter] = stmt
        return stmt

    def thread_with_first_page(self, scope_filter: str) -> TextualSelect:
        stmt = self.thread_pages.get(scope_filter)
        if stmt is None:
            sql = self.thread_page_select.format(scope=scope_filter)
            stmt = self.thread_pages[scope_filter] = text(sql).columns(*self.thread_page_types)
        return stmt

    def inbox_thread_with_first_page(self, pod_filter: str) -> TextualSelect:
        key = "inbox" + pod_filter
        stmt = self.thread_pages.get(key)
        if stmt is None:
            sql = self.inbox_thread_page_select.format(scope=pod_filter)
            stmt = self.thread_pages[key] = text(sql).columns(*self.inbox_thread_page_types)
        return stmt


def _for(conn: ReadConnection) -> _Statements:
    return _statements_for(conn.dialect.name)


@functools.cache  # one per dialect, built on first use
def _statements_for(dialect: str) -> _Statements:
    return _Statements(dialect)


def _record(row: Row[Any], sort_in_python: bool) -> MessageRecord:
    labels = row.labels or []
    attachments = [AttachmentRecord(*a) for a in row.attachments or []]
    if sort_in_python:
        labels.sort()  # code point order, as SQLite's BINARY collation sorts the ORM's lists
        attachments.sort(key=lambda a: a.position)
    return MessageRecord(row, labels, attachments)


async def get_message(conn: ReadConnection, caller: Caller, inbox_id: str, message_id: str) -> MessageRecord:
    """messages.get_message with its inbox check, in one statement."""
    stmts = _for(conn)
    candidates = message_id_candidates(message_id)
    params = {"inbox_id": inbox_key(inbox_id), "mid1": candidates[0], "mid2": candidates[-1]}
    row = (await conn.execute(stmts.message, params)).first()
    if row is None or not inbox_is_visible(caller, row.inbox_org, params["inbox_id"], row.inbox_pod):
        raise NotFound("Inbox not found")
    if row.id is None:
        raise NotFound("Message not found")
    record = _record(row, stmts.sort_in_python)
    if unreadable_labels(caller).intersection(record.labels):
        raise NotFound("Message not found")
    return record


async def require_visible_inbox(conn: ReadConnection, caller: Caller, inbox_id: str) -> str:
    """inboxes.get_inbox on a connection: the inbox's key, or 404."""
    key = inbox_key(inbox_id)
    found = (await conn.execute(_for(conn).inbox, {"inbox_id": key})).first()
    if found is None or not inbox_is_visible(caller, found.organization_id, key, found.pod_id):
        raise NotFound("Inbox not found")
    return key


NOTHING = " AND 1 = 0"  # a scope that holds no thread


async def thread_scope_filter(
    conn: ReadConnection, caller: Caller, scope: Scope
) -> tuple[str, dict[str, Any]]:
    """threads.resolve_scope then threads._scoped: the same 404/403s and the narrowest filter."""
    stmts = _for(conn)
    inbox_id = scope.inbox_id
    if inbox_id is not None:
        inbox_id = await require_visible_inbox(conn, caller, inbox_id)
    if scope.pod_id is not None:
        caller.require_pod_access(scope.pod_id)
        pod = (await conn.execute(stmts.pod, {"pod_id": scope.pod_id})).first()
        if pod is None or not pod_is_visible(caller, pod.organization_id, scope.pod_id):
            raise NotFound("Pod not found")
    return _narrowest(caller, inbox_id, scope.pod_id)


def thread_scope_sql(caller: Caller, scope: Scope) -> tuple[str, dict[str, Any]]:
    """thread_scope_filter's filter without its checks, the organization in it: every thread it
    finds is one the caller may see, but finding none may be thread_scope_filter's 404 or 403."""
    inbox_id = inbox_key(scope.inbox_id) if scope.inbox_id is not None else None
    sql, params = _narrowest(caller, inbox_id, scope.pod_id)
    if sql == NOTHING or "scope_org" in params:
        return sql, params
    return sql + " AND t.organization_id = :scope_org", {**params, "scope_org": caller.organization_id}


def _narrowest(caller: Caller, inbox_id: str | None, pod_id: str | None) -> tuple[str, dict[str, Any]]:
    inbox_ids = {i for i in (caller.inbox_id, inbox_id) if i}
    pod_ids = {p for p in (caller.pod_id, pod_id) if p}
    if len(inbox_ids) > 1 or len(pod_ids) > 1:
        return NOTHING, {}
    if inbox_ids:
        params: dict[str, Any] = {"scope_inbox": inbox_ids.pop()}
        if pod_ids:
            params["scope_pod"] = pod_ids.pop()
            return " AND t.inbox_id = :scope_inbox AND t.pod_id = :scope_pod", params
        return " AND t.inbox_id = :scope_inbox", params
    if pod_ids:
        return " AND t.pod_id = :scope_pod", {"scope_pod": pod_ids.pop()}
    return " AND t.organization_id = :scope_org", {"scope_org": caller.organization_id}


async def get_thread(
    conn: ReadConnection, caller: Caller, scope: Scope, thread_id: str, *, limit: int, page_token: str | None
) -> ThreadRecord:
    """threads.get_thread plus threads.thread_messages, with their errors in the same order."""
    stmts = _for(conn)
    page = None
    thread: Any  # a Row, or a ThreadRow cut from a joined row: the same attribute names
    if page_token:
        scope_filter, params = await thread_scope_filter(conn, caller, scope)
        thread = (await conn.execute(stmts.thread(scope_filter), {"thread_id": thread_id, **params})).first()
        if thread is None:
            raise NotFound("Thread not found")
    else:
        rows = await _thread_rows(conn, caller, scope, thread_id, limit + 1)
        thread = ThreadRow(*(getattr(rows[0], THREAD_PREFIX + attr) for attr in THREAD_ATTRS))
        page = _page(stmts, thread.id, [row for row in rows if row.id is not None], limit)
    if page is not None and page.next_page_token is None:  # the page is the whole thread
        labels = {label for m in page.items for label in m.labels}
        attachments = [a for m in page.items for a in m.attachments]
    else:
        found = await conn.execute(stmts.thread_labels, {"thread_id": thread.id})
        labels = {label for (label,) in found}
        found = await conn.execute(stmts.thread_attachments, {"thread_id": thread.id})
        attachments = [AttachmentRecord(*a) for a in found]
    if labels & unreadable_labels(caller):
        raise NotFound("Thread not found")
    if page is None:
        after = decode_token(_page_kind(thread.id), page_token or "", [datetime, str])
        page_params = {"thread_id": thread.id, "limit": limit + 1, "after_ts": after[0], "after_id": after[1]}
        page = _page(stmts, thread.id, (await conn.execute(stmts.next_page, page_params)).all(), limit)
    return ThreadRecord(thread, labels, attachments, page)


async def _thread_rows(
    conn: ReadConnection, caller: Caller, scope: Scope, thread_id: str, limit: int
) -> Sequence[Row[Any]]:
    """The thread joined to its newest ``limit`` messages (one row with NULL messages if it has none)."""
    stmts = _for(conn)
    params: dict[str, Any] = {"thread_id": thread_id, "limit": limit}
    if scope.inbox_id is None:
        scope_filter, scope_params = await thread_scope_filter(conn, caller, scope)
        rows = (
            await conn.execute(stmts.thread_with_first_page(scope_filter), {**params, **scope_params})
        ).all()
    else:
        # thread_scope_filter's inbox check, in the same statement. Once the inbox is visible, the only
        # other filter _scoped would add is the caller's pod.
        inbox_id = params["inbox_id"] = inbox_key(scope.inbox_id)
        pod_filter = ""
        if caller.pod_id:
            pod_filter, params["scope_pod"] = " AND t.pod_id = :scope_pod", caller.pod_id
        rows = (await conn.execute(stmts.inbox_thread_with_first_page(pod_filter), params)).all()
        if not rows or not inbox_is_visible(caller, rows[0].inbox_org, inbox_id, rows[0].inbox_pod):
            raise NotFound("Inbox not found")
        if getattr(rows[0], THREAD_PREFIX + "id") is None:
            rows = []
    if not rows:
        raise NotFound("Thread not found")
    return rows


def _page_kind(thread_id: str) -> str:
    return "thread_messages:" + thread_id


def _page(stmts: _Statements, thread_id: str, rows: Sequence[Row[Any]], limit: int) -> Page[MessageRecord]:
    """pagination.paginate's page of (timestamp, id) descending, returned oldest first."""
    messages = [_record(row, stmts.sort_in_python) for row in rows]
    token = None
    if len(messages) > limit:
        messages = messages[:limit]
        last = messages[-1].row
        token = encode_token(_page_kind(thread_id), [last.timestamp, last.id])
    messages.reverse()
    return Page(messages, limit, token)
