"""Message and thread lists in SQLAlchemy Core: one statement a page, no ORM objects.

Through the ORM a page of 50 was 50 objects plus selectin loads of their labels and attachments
(threads: two more statements for the page's label unions and attachments), then FastAPI's
jsonable_encoder walk: 4.5-6 ms of server CPU a request, against well under 1 ms of SQL. Here each
row of the page carries its labels and attachments aggregated as JSON, as in mail_reads, under the
ORM attribute names so http/wire_mail shapes them. The caller's scope is part of the WHERE; an
inbox or pod route checks that its scope is there to be seen only when its page is empty. Pages run
on the driver's own connection (db/driver_reads), compiled once per shape. The filter rules are
messages.message_conditions and threads.thread_conditions, the thread scope is mail_reads'; keyset
order and page tokens are pagination's, so a token from the ORM lists still works.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from sqlalchemy import JSON, Select, bindparam, literal_column, select, text, type_coerce
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeEngine

from agentmx.db.driver_reads import DriverConnection, DriverStatement
from agentmx.db.models import Message, Thread
from agentmx.db.types import driver_time
from agentmx.errors import NotFound, ValidationFailed
from agentmx.services.caller import Caller
from agentmx.services.inboxes import inbox_key
from agentmx.services.list_conditions import StatementCache
from agentmx.services.mail_reads import (
    ATTACHMENT_FIELDS,
    THREAD_ATTRS,
    AttachmentRecord,
    message_aggregates,
    require_visible_inbox,
    thread_scope_filter,
    thread_scope_sql,
)
from agentmx.services.messages import MessageFilters, message_conditions
from agentmx.services.pagination import Page, keyset_page, keyset_params, keyset_select
from agentmx.services.threads import Scope, ThreadFilters, thread_conditions

# A MessageItem's columns (no bodies, headers or reply_to; "id" for the page token), and a
# ThreadItem's. The JSON-valued ones come back in one JSON array a row, "lists", with the labels and
# attachments, decoded once: a json.loads per value was a sixth of a page's CPU. A page's rows go
# to http/wire_mail as they are (message_list_item, thread_list_item).
MESSAGE_SCALARS = (
    "id",
    "inbox_id",
    "thread_id",
    "message_id",
    "timestamp",
    "from_",
    "subject",
    "preview",
    "in_reply_to",
    "size",
    "created_at",
    "updated_at",
)
MESSAGE_LISTS = ("to", "cc", "bcc", "references")
THREAD_LISTS = ("senders", "recipients")
THREAD_SCALARS = tuple(attr for attr in THREAD_ATTRS if attr not in THREAD_LISTS)
KEYS = ("timestamp", "id")  # keyset order, newest first unless ascending
m = Message.__table__.alias("m")  # mail_reads' aggregates name the message "m"
t = Thread.__table__.alias("t")  # and its scope filters name the thread "t"
_statements: StatementCache[DriverStatement] = StatementCache()  # a page's SELECT by shape (list_conditions)


def _labelled(table: Any, model: Any, attrs: tuple[str, ...]) -> list[Any]:
    """``table``'s columns for ``model``'s attributes, named by attribute (from_addr AS from_).

    Times come back as the driver reads them, UTC (naive on SQLite), without UTCDateTime's
    conversion: the lists' documents leave them to wire.json_response (wire.as_is), and a page
    token's time means UTC either way. A fifth of a page's CPU went to converting and formatting.
    """
    out = []
    for attr in attrs:
        column = table.c[model.__mapper__.attrs[attr].columns[0].name]
        out.append(type_coerce(column, driver_time(column.type)).label(attr))
    return out


def _json_lists(dialect: str, alias: str, model: Any, attrs: tuple[str, ...], *aggregates: str) -> Any:
    """One JSON array of ``model``'s JSON columns ``attrs`` then the ``aggregates``, named "lists"."""
    values = [f'{alias}."{model.__mapper__.attrs[attr].columns[0].name}"' for attr in attrs] + list(
        aggregates
    )
    if dialect == "postgresql":
        sql = f"json_build_array({', '.join(values)})"
    else:
        # The stored JSON texts joined into an array's text: SQLite's json_array(json(...), ...)
        # parsed and rewrote each of them, 0.27 → 0.19 ms of a 51-row page's SQL. Python parses
        # the array (and every text in it) all the same.
        sql = " || ',' || ".join(f"coalesce({v}, 'null')" for v in values)
        sql = f"'[' || {sql} || ']'"
        return literal_column(sql, _ListsText()).label("lists")
    return literal_column(sql, JSON()).label("lists")


class _ListsText(TypeEngine[Any]):
    """SQLite's "lists" text, parsed by orjson itself. Through JSON's processor (SQLAlchemy's wrapper
    around db/types.json_loads) a row's took 1.5 µs, this 0.4: json_loads looks for integers past 64
    bits, and the lists hold none (strings, and SQLite's integers, which are 64-bit)."""

    def result_processor(self, dialect: Dialect, coltype: object) -> Callable[[str], Any]:
        return _parse_lists


def _parse_lists(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)  # a lone surrogate (json.dumps stored it escaped): orjson refuses it


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
    """The two list SELECTs of one dialect without their WHERE, built once (each page adds its own)."""

    def __init__(self, dialect: str) -> None:
        self.sort_in_python = dialect != "postgresql"
        self.messages: Select[Any] = select(
            *_labelled(m, Message, MESSAGE_SCALARS),
            _json_lists(dialect, "m", Message, MESSAGE_LISTS, *message_aggregates(dialect)),
        )
        self.threads: Select[Any] = select(
            *_labelled(t, Thread, THREAD_SCALARS),
            _json_lists(dialect, "t", Thread, THREAD_LISTS, *_thread_aggregates(dialect)),
        )


def _for(conn: DriverConnection) -> _Selects:
    return _selects_for(conn.dialect.name)


@functools.cache  # one per dialect, built on first use
def _selects_for(dialect: str) -> _Selects:
    return _Selects(dialect)


async def list_messages(
    conn: DriverConnection,
    caller: Caller,
    inbox_id: str,
    filters: MessageFilters,
    *,
    limit: int,
    page_token: str | None,
    ascending: bool,
) -> Page[Any]:
    """One page of an inbox's messages; 404 if the caller cannot see the inbox.

    A message carries its inbox's organization and pod, so the page's own WHERE holds the caller's
    scope and a visible inbox's page is one statement. Only an empty page (or a bad token) asks
    whether the inbox is there to be seen: on PostgreSQL that round trip was a fifth of the time.
    """
    inbox = inbox_key(inbox_id)
    if caller.inbox_id is not None and caller.inbox_id != inbox:
        raise NotFound("Inbox not found")
    selects = _for(conn)
    kind = "messages:" + inbox
    found = message_conditions(m, caller, filters)
    in_pod = caller.pod_id is not None
    scope = {"list_inbox": inbox, "list_org": caller.organization_id, "list_pod": caller.pod_id}
    check = functools.partial(require_visible_inbox, conn, caller, inbox_id)
    params = {**scope, **found.params, **await _paging(check, kind, page_token, m, limit)}

    def build() -> Select[Any]:
        stmt = selects.messages.where(
            m.c.inbox_id == bindparam("list_inbox"),
            m.c.organization_id == bindparam("list_org"),
            *([m.c.pod_id == bindparam("list_pod")] if in_pod else []),
            *found.where(),
        )
        return keyset_select(stmt, columns=_keys(m), ascending=ascending, from_token=bool(page_token))

    shape = None if found.shape is None else ("messages", in_pod, *found.shape, ascending, bool(page_token))
    rows = await _keyset_rows(conn, shape, build, params, kind, limit)
    if not rows.items:
        await check()  # 404, or an inbox with nothing to show
    return Page(_messages_in_wire_order(rows.items, selects.sort_in_python), rows.limit, rows.next_page_token)


async def list_threads(
    conn: DriverConnection,
    caller: Caller,
    scope: Scope,
    filters: ThreadFilters,
    *,
    limit: int,
    page_token: str | None,
    ascending: bool,
) -> Page[Any]:
    """One page of the threads in ``scope``; its 404/403s as thread_scope_filter's.

    As for messages, the scope is in the page's WHERE and only an empty page runs the checks,
    except for an inbox key on a pod route, refused (403) even where it would see threads.
    """
    selects = _for(conn)
    check = functools.partial(thread_scope_filter, conn, caller, scope)
    if scope.pod_id is not None and caller.inbox_id is not None:
        scope_sql, scope_params = await check()
    else:
        scope_sql, scope_params = thread_scope_sql(caller, scope)
    inbox = inbox_key(scope.inbox_id) if scope.inbox_id is not None else ""
    kind = f"threads:{inbox}:{scope.pod_id or ''}"
    found = thread_conditions(t, caller, filters)
    params = {**scope_params, **found.params, **await _paging(check, kind, page_token, t, limit)}

    def build() -> Select[Any]:
        stmt = selects.threads.where(text(scope_sql.removeprefix(" AND ")), *found.where())
        return keyset_select(stmt, columns=_keys(t), ascending=ascending, from_token=bool(page_token))

    shape = None if found.shape is None else ("threads", scope_sql, *found.shape, ascending, bool(page_token))
    rows = await _keyset_rows(conn, shape, build, params, kind, limit)
    if not rows.items:
        await check()  # 404/403, or a scope with nothing to show
    return Page(_threads_in_wire_order(rows.items, selects.sort_in_python), rows.limit, rows.next_page_token)


async def _paging(
    check: Callable[[], Awaitable[Any]], kind: str, page_token: str | None, table: Any, limit: int
) -> dict[str, Any]:
    """keyset_params, but a scope the caller cannot see is its 404/403 whatever the token says."""
    try:
        return keyset_params(kind, page_token, _keys(table), limit)
    except ValidationFailed:
        await check()
        raise


def _keys(table: Any) -> list[Any]:
    return [table.c[k] for k in KEYS]


async def _keyset_rows(
    conn: DriverConnection,
    shape: tuple[Any, ...] | None,
    build: Callable[[], Select[Any]],
    params: dict[str, Any],
    kind: str,
    limit: int,
) -> Page[Any]:
    """One page of a keyset_select's rows, with its next page token."""
    compiled = _statements.get(
        shape and (conn.dialect.name, *shape), lambda: DriverStatement(build(), conn.dialect)
    )
    return keyset_page((await conn.run(compiled, params)).all(), kind=kind, keys=KEYS, limit=limit)


def _messages_in_wire_order(rows: list[Any], sort_in_python: bool) -> list[Any]:
    """A message page's rows with, in ``lists``, labels sorted and attachments as AttachmentRecords,
    by position (SQLite cannot order inside json_group_array)."""
    for row in rows:
        lists = row.lists
        if sort_in_python and lists[4]:
            lists[4].sort()  # code point order, as SQLite's BINARY collation sorts the ORM's lists
        if attachments := lists[5]:
            if sort_in_python:
                attachments.sort(key=lambda a: a[0])
            lists[5] = [AttachmentRecord(*a) for a in attachments]
    return rows


def _threads_in_wire_order(rows: list[Any], sort_in_python: bool) -> list[Any]:
    """A thread page's rows with their attachments as AttachmentRecords, oldest message first (on
    SQLite each led by its message's timestamp and id for the sort); labels are sorted on the wire."""
    for row in rows:
        lists = row.lists
        if attachments := lists[3]:
            if sort_in_python:
                attachments = [a[2:] for a in sorted(attachments, key=lambda a: (a[0], a[1], a[2]))]
            lists[3] = [AttachmentRecord(*a) for a in attachments]
    return rows
