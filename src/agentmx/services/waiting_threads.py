"""Threads waiting for an original: the reply stored before the message it answers.

A message none of whose In-Reply-To/References ids its inbox has (its thread is new, or it joined
one waiting for it) leaves those ids in ``unmatched_references``. A message arriving later with
one of them as its own Message-ID, and answering nothing the inbox has, joins that thread instead of
starting another: the conversation stays one thread (as Gmail and JWZ threading show it). Its own
references come first, and threads are never merged: one message joins one thread.

The ids are looked up with the known-Message-ID lookup, in the same statement (``known_or_waiting``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import ColumnElement, Select, literal_column, select, union_all

from agentmx.db.models import Message, UnmatchedReference
from agentmx.db.transient import table_of
from agentmx.mail.parse import MESSAGE_ID_CHARS

_m = table_of(Message).c
_u = table_of(UnmatchedReference).c
_waiting = table_of(Message).alias("waiting")

Match = Callable[[Any], ColumnElement[bool]]


def known_or_waiting(inbox_matches: Match, id_matches: Match) -> Select[Any]:
    """Rows ``(inbox_id, message_id, id, thread_id, waits)``: the stored messages with the ids
    (``waits`` 0), and the messages waiting for one of them (``waits`` 1; ``id`` and ``thread_id``
    are the waiting message's)."""
    known = select(_m.inbox_id, _m.message_id, _m.id, _m.thread_id, literal_column("0").label("waits")).where(
        inbox_matches(_m.inbox_id), id_matches(_m.message_id)
    )
    waiting = (
        select(_u.inbox_id, _u.message_id, _u.message_pk, _waiting.c.thread_id, literal_column("1"))
        .join_from(table_of(UnmatchedReference), _waiting, _waiting.c.id == _u.message_pk)
        .where(inbox_matches(_u.inbox_id), id_matches(_u.message_id))
    )
    both = union_all(known, waiting).subquery("known_or_waiting")
    return select(*both.c)


Found = dict[tuple[str, str], tuple[str, str]]


def split(rows: list[Any], wanted: set[tuple[str, str]]) -> tuple[Found, Found]:
    """``known_or_waiting`` rows as (known, waiting): (inbox, Message-ID) -> (message pk, thread id).

    Of several threads waiting for one id, the one whose waiting message was stored first (ids sort
    by time): the conversation's oldest part."""
    known: Found = {}
    waiting: Found = {}
    for inbox_id, message_id, pk, thread_id, waits in rows:
        key = (inbox_id, message_id)
        if key not in wanted:
            continue
        if not waits:
            known[key] = (pk, thread_id)
        elif key not in waiting or pk < waiting[key][0]:
            waiting[key] = (pk, thread_id)
    return known, waiting


def unmatched_rows(message: Message, references: list[str]) -> list[dict[str, str]]:
    """The rows saying ``message`` waits for ``references`` (ids its inbox does not have), each once.

    Only ids a message could have: References are not cut to the column as Message-IDs are, and
    PostgreSQL refused a wider one (or one past its index's 2,704 bytes), the whole batch with it."""
    return [
        {"inbox_id": message.inbox_id, "message_id": ref, "message_pk": message.id}
        for ref in dict.fromkeys(references)
        if ref != message.message_id and _storable(ref)
    ]


def _storable(message_id: str) -> bool:
    """Fits messages.message_id: at most its width in UTF-8 bytes, and encodable (no lone surrogate)."""
    try:
        return len(message_id.encode("utf-8")) <= MESSAGE_ID_CHARS
    except UnicodeEncodeError:
        return False
