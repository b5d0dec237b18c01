"""Message and thread lists in SQLAlchemy Core: one statement a page, no ORM objects.

Through the ORM a page of 50 was 50 objects plus selectin loads of their labels and attachments
(threads: two more statements for the page's label unions and attachments): 5-11 ms of CPU on
SQLite and about 25 ms on PostgreSQL, against well under 1 ms of SQL. Here each row of the page
carries its labels and attachments aggregated as JSON, as in mail_reads, under the ORM attribute
names so http/wire_mail shapes them. The filter rules are messages.message_conditions and
threads.thread_conditions, the thread scope is mail_reads'; keyset order and page tokens are
pagination's, so a token from the ORM lists still works.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import JSON, Row, literal_column, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from agentmx.db.models import Message, Thread
from agentmx.errors import NotFound
from agentmx.services.caller import Caller
from agentmx.services.inboxes import inbox_is_visible, inbox_key
from agentmx.services.mail_reads import (
    ATTACHMENT_FIELDS,
    THREAD_ATTRS,
    AttachmentRecord,
    MessageRecord,
    _aggregates,
    _record,
    _scope_filter,
)
from agentmx.services.messages import MessageFilters, message_conditions
from agentmx.services.pagination import Page, keyset_page, keyset_select
from agentmx.services.threads import Scope, ThreadFilters, thread_conditions

# A MessageItem's columns: no bodies, headers or reply_to (and "id" for the page token).
MESSAGE_ITEM_ATTRS = (
    "id",
    "inbox_id",
    "thread_id",
    "message_id",
    "timestamp",
    "from_",
    "to",
    "cc",
    "bcc",
    "subject",
    "preview",
    "in_reply_to",
    "references",
    "size",
    "created_at",
    "updated_at",
)
KEYS = ("timestamp", "id")  # keyset order, newest first unless ascending
m = Message.__table__.alias("m")  # mail_reads' aggregates name the message "m"
t = Thread.__table__.alias("t")  # and its scope filters name the thread "t"
INBOX = text("SELECT organization_id, pod_id FROM inboxes WHERE id = :inbox_id")


@dataclass(slots=True)
class ThreadItemRecord:
    row: Row[Any]  # Thread's columns under its attribute names
    labels: list[str]  # the union of its messages' labels
    attachments: list[AttachmentRecord]  # its messages', oldest message first


def _labelled(table: Any, model: Any, attrs: tuple[str, ...]) -> list[Any]:
    """``table``'s columns for ``model``'s attributes, named by attribute (from_addr AS from_)."""
    return [table.c[model.__mapper__.attrs[attr].columns[0].name].label(attr) for attr in attrs]


def _thread_aggregates(dialect: str) -> tuple[str, str]:
    """Per-thread label union and attachments as JSON arrays.

    SQLite cannot order inside json_group_array, so there each attachment leads with its message's
    (timestamp, id) and Python sorts; the order is mailstore.thread_attachments'.
    """
    fields = ", ".join("a." + name.strip() for name in ATTACHMENT_FIELDS.split(","))
    labels_from = "FROM messages tm JOIN message_labels ml ON ml.message_pk = tm.id WHERE tm.thread_id = t.id"
    attachments_from = "FROM messages tm JOIN attachments a ON a.message_pk = tm.id WHERE tm.thread_id = t.id"
    if dialect == "postgresql":
        return (
            f"(SELECT json_agg(DISTINCT ml.label) {labels_from})",
            f'(SELECT json_agg(json_build_array({fields}) ORDER BY tm."timestamp", tm.id, a.position)'
            f" {attachments_from})",
        )
    return (
        f"(SELECT json_group_array(DISTINCT ml.label) {labels_from})",
        f'(SELECT json_group_array(json_array(tm."timestamp", tm.id, {fields})) {attachments_from})',
    )


class _Selects:
    """The SELECT lists of one dialect, built once."""

    def __init__(self, dialect: str) -> None:
        self.sort_in_python = dialect != "postgresql"
        labels, attachments = _aggregates(dialect)
        self.messages = [
            *_labelled(m, Message, MESSAGE_ITEM_ATTRS),
            literal_column(labels, JSON()).label("labels"),
            literal_column(attachments, JSON()).label("attachments"),
        ]
        labels, attachments = _thread_aggregates(dialect)
        self.threads = [
            *_labelled(t, Thread, THREAD_ATTRS),
            literal_column(labels, JSON()).label("labels"),
            literal_column(attachments, JSON()).label("attachments"),
        ]


_selects: dict[str, _Selects] = {}


def _for(conn: AsyncConnection) -> _Selects:
    name = conn.dialect.name
    found = _selects.get(name)
    if found is None:
        found = _selects[name] = _Selects(name)
    return found


async def visible_inbox(conn: AsyncConnection, caller: Caller, inbox_id: str) -> str:
    """inboxes.get_inbox on a connection: the inbox's key, or 404."""
    key = inbox_key(inbox_id)
    found = (await conn.execute(INBOX, {"inbox_id": key})).first()
    if found is None or not inbox_is_visible(caller, found.organization_id, key, found.pod_id):
        raise NotFound("Inbox not found")
    return key


async def list_messages(
    conn: AsyncConnection,
    caller: Caller,
    inbox: str,
    filters: MessageFilters,
    *,
    limit: int,
    page_token: str | None,
    ascending: bool,
) -> Page[MessageRecord]:
    """One page of a visible inbox's messages (``inbox``: from visible_inbox)."""
    selects = _for(conn)
    kind = "messages:" + inbox
    stmt = select(*selects.messages).where(m.c.inbox_id == inbox, *message_conditions(m, caller, filters))
    stmt = keyset_select(
        stmt,
        kind=kind,
        columns=[m.c[k] for k in KEYS],
        limit=limit,
        page_token=page_token,
        ascending=ascending,
    )
    page = keyset_page(list((await conn.execute(stmt)).all()), kind=kind, keys=KEYS, limit=limit)
    items = [_record(row, selects.sort_in_python) for row in page.items]
    return Page(items, page.limit, page.next_page_token)


async def list_threads(
    conn: AsyncConnection,
    caller: Caller,
    scope: Scope,
    filters: ThreadFilters,
    *,
    limit: int,
    page_token: str | None,
    ascending: bool,
) -> Page[ThreadItemRecord]:
    """One page of the threads in ``scope``, after its 404/403 checks."""
    selects = _for(conn)
    scope_sql, scope_params = await _scope_filter(conn, caller, scope)
    in_scope = text(scope_sql.removeprefix(" AND ")).bindparams(**scope_params)
    inbox = inbox_key(scope.inbox_id) if scope.inbox_id is not None else ""
    kind = f"threads:{inbox}:{scope.pod_id or ''}"
    stmt = select(*selects.threads).where(in_scope, *thread_conditions(t, caller, filters))
    stmt = keyset_select(
        stmt,
        kind=kind,
        columns=[t.c[k] for k in KEYS],
        limit=limit,
        page_token=page_token,
        ascending=ascending,
    )
    page = keyset_page(list((await conn.execute(stmt)).all()), kind=kind, keys=KEYS, limit=limit)
    items = [_thread_record(row, selects.sort_in_python) for row in page.items]
    return Page(items, page.limit, page.next_page_token)


def _thread_record(row: Row[Any], sort_in_python: bool) -> ThreadItemRecord:
    attachments = row.attachments or []
    if sort_in_python:
        attachments = [a[2:] for a in sorted(attachments, key=lambda a: (a[0], a[1], a[2]))]
    return ThreadItemRecord(row, row.labels or [], [AttachmentRecord(*a) for a in attachments])
