"""Messages, threads and attachments in AgentMail's wire format (field names per SDK 2.0.18)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from agentmx.db.models import Attachment, Message, Thread
from agentmx.http.wire import drop_none, iso
from agentmx.mail import stored_extracts


def attachment(row: Attachment | Any) -> dict[str, Any]:
    """``row``: an Attachment, or any record with its attribute names (the hot reads' rows)."""
    return drop_none(
        {
            "attachment_id": row.id,
            "filename": row.filename,
            "size": row.size,
            "content_type": row.content_type,
            "content_disposition": row.content_disposition,
            "content_id": row.content_id,
        }
    )


def message(row: Message, full: bool) -> dict[str, Any]:
    """A Message (``full``) or a MessageItem (list rows: no bodies, no headers)."""
    return message_document(row, row.label_names, row.attachments, full)


Time = Callable[[datetime | None], Any]


def message_document(
    row: Message | Any, labels: list[str], attachments: Iterable[Any], full: bool, time: Time = iso
) -> dict[str, Any]:
    """``row``: a Message, or a Core row with Message's attribute names (the hot reads).

    ``time``: ``wire.as_is`` leaves datetimes for ``wire.json_response`` to write (the lists).
    """
    data: dict[str, Any] = {
        "inbox_id": row.inbox_id,
        "thread_id": row.thread_id,
        "message_id": row.message_id,
        "labels": labels,
        "timestamp": time(row.timestamp),
        "from": row.from_ or "",
        "to": list(row.to or []),
        "cc": list(row.cc) if row.cc else None,
        "bcc": list(row.bcc) if row.bcc else None,
        "subject": row.subject,
        "preview": row.preview,
        "attachments": [attachment(a) for a in attachments] or None,
        "in_reply_to": row.in_reply_to,
        "references": list(row.references) if row.references else None,
        "size": row.size,
        "updated_at": time(row.updated_at),
        "created_at": time(row.created_at),
    }
    if full:
        data["headers"] = dict(row.headers) if row.headers else None
        data["reply_to"] = list(row.reply_to) if row.reply_to else None
        data["text"] = row.text
        data["html"] = row.html
        data["extracted_text"] = stored_extracts.from_storage(row.extracted_text, row.text)
        data["extracted_html"] = stored_extracts.from_storage(row.extracted_html, row.html)
    return drop_none(data)


def thread_item(
    row: Thread | Any, labels: Iterable[str], attachments: Iterable[Any], time: Time = iso
) -> dict[str, Any]:
    """A ThreadItem. ``labels`` is the union of its messages' labels; ``row`` and ``time`` as in message_document."""
    return drop_none(
        {
            "inbox_id": row.inbox_id,
            "thread_id": row.id,
            "labels": sorted(set(labels)),
            "timestamp": time(row.timestamp),
            "received_timestamp": time(row.received_timestamp),
            "sent_timestamp": time(row.sent_timestamp),
            "senders": list(row.senders or []),
            "recipients": list(row.recipients or []),
            "subject": row.subject,
            "preview": row.preview,
            "attachments": [attachment(a) for a in attachments] or None,
            "last_message_id": row.last_message_id or "",
            "message_count": row.message_count,
            "size": row.size,
            "updated_at": time(row.updated_at),
            "created_at": time(row.created_at),
        }
    )


def thread(
    row: Thread | Any,
    labels: Iterable[str],
    attachments: Iterable[Any],
    messages: list[dict[str, Any]],
    limit: int,
    next_page_token: str | None,
    time: Time = iso,
) -> dict[str, Any]:
    """A Thread: ThreadItem fields plus one page of full message documents (ascending)."""
    data = thread_item(row, labels, attachments, time)
    data["count"] = len(messages)
    data["limit"] = limit
    if next_page_token:
        data["next_page_token"] = next_page_token
    data["messages"] = messages
    return data
