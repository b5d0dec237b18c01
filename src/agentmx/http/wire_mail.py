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
    data = _message_item(
        row.inbox_id,
        row.thread_id,
        row.message_id,
        labels,
        time(row.timestamp),
        row.from_,
        row.to,
        row.cc,
        row.bcc,
        row.subject,
        row.preview,
        attachments,
        row.in_reply_to,
        row.references,
        row.size,
        time(row.updated_at),
        time(row.created_at),
    )
    if full:
        full_fields = {
            "headers": dict(row.headers) if row.headers else None,
            "reply_to": list(row.reply_to) if row.reply_to else None,
            "text": row.text,
            "html": row.html,
            "extracted_text": stored_extracts.from_storage(row.extracted_text, row.text),
            "extracted_html": stored_extracts.from_storage(row.extracted_html, row.html),
        }
        data.update(drop_none(full_fields))
    return data


def message_list_item(row: Any) -> dict[str, Any]:
    """A message of a list page, from its row (services/mail_lists): MessageItem's columns, times as
    the driver read them (for ``wire.json_response``), and ``lists``: [to, cc, bcc, references,
    labels, attachments]. Through a MessageItem, a record and message_document, a 51-row page's
    rows took 0.29 ms from the driver's tuples to documents, this way 0.11."""
    to, cc, bcc, references, labels, attachments = row.lists
    return _message_item(
        row.inbox_id,
        row.thread_id,
        row.message_id,
        labels or [],
        row.timestamp,
        row.from_,
        to,
        cc,
        bcc,
        row.subject,
        row.preview,
        attachments,
        row.in_reply_to,
        references,
        row.size,
        row.updated_at,
        row.created_at,
    )


def _message_item(
    inbox_id: Any,
    thread_id: Any,
    message_id: Any,
    labels: Any,
    timestamp: Any,
    from_: Any,
    to: Any,
    cc: Any,
    bcc: Any,
    subject: Any,
    preview: Any,
    attachments: Iterable[Any] | None,
    in_reply_to: Any,
    references: Any,
    size: Any,
    updated_at: Any,
    created_at: Any,
) -> dict[str, Any]:
    """A MessageItem's fields in the wire's order, without the None ones (as drop_none would)."""
    data: dict[str, Any] = {}
    if inbox_id is not None:
        data["inbox_id"] = inbox_id
    if thread_id is not None:
        data["thread_id"] = thread_id
    if message_id is not None:
        data["message_id"] = message_id
    if labels is not None:
        data["labels"] = labels
    if timestamp is not None:
        data["timestamp"] = timestamp
    data["from"] = from_ or ""
    data["to"] = list(to or [])
    if cc:
        data["cc"] = list(cc)
    if bcc:
        data["bcc"] = list(bcc)
    if subject is not None:
        data["subject"] = subject
    if preview is not None:
        data["preview"] = preview
    if attachments and (documents := [attachment(a) for a in attachments]):
        data["attachments"] = documents
    if in_reply_to is not None:
        data["in_reply_to"] = in_reply_to
    if references:
        data["references"] = list(references)
    if size is not None:
        data["size"] = size
    if updated_at is not None:
        data["updated_at"] = updated_at
    if created_at is not None:
        data["created_at"] = created_at
    return data


def thread_item(
    row: Thread | Any, labels: Iterable[str], attachments: Iterable[Any], time: Time = iso
) -> dict[str, Any]:
    """A ThreadItem. ``labels`` is the union of its messages' labels; ``row`` and ``time`` as in message_document."""
    return _thread_item(
        row.inbox_id,
        row.id,
        labels,
        time(row.timestamp),
        time(row.received_timestamp),
        time(row.sent_timestamp),
        row.senders,
        row.recipients,
        row.subject,
        row.preview,
        attachments,
        row.last_message_id,
        row.message_count,
        row.size,
        time(row.updated_at),
        time(row.created_at),
    )


def thread_list_item(row: Any) -> dict[str, Any]:
    """A thread of a list page, from its row, as message_list_item: ThreadItem's columns and
    ``lists``: [senders, recipients, labels, attachments]."""
    senders, recipients, labels, attachments = row.lists
    return _thread_item(
        row.inbox_id,
        row.id,
        labels or (),
        row.timestamp,
        row.received_timestamp,
        row.sent_timestamp,
        senders,
        recipients,
        row.subject,
        row.preview,
        attachments,
        row.last_message_id,
        row.message_count,
        row.size,
        row.updated_at,
        row.created_at,
    )


def _thread_item(
    inbox_id: Any,
    thread_id: Any,
    labels: Iterable[str],
    timestamp: Any,
    received_timestamp: Any,
    sent_timestamp: Any,
    senders: Any,
    recipients: Any,
    subject: Any,
    preview: Any,
    attachments: Iterable[Any] | None,
    last_message_id: Any,
    message_count: Any,
    size: Any,
    updated_at: Any,
    created_at: Any,
) -> dict[str, Any]:
    """A ThreadItem's fields in the wire's order, without the None ones (as drop_none would)."""
    data: dict[str, Any] = {}
    if inbox_id is not None:
        data["inbox_id"] = inbox_id
    if thread_id is not None:
        data["thread_id"] = thread_id
    data["labels"] = sorted(set(labels))
    if timestamp is not None:
        data["timestamp"] = timestamp
    if received_timestamp is not None:
        data["received_timestamp"] = received_timestamp
    if sent_timestamp is not None:
        data["sent_timestamp"] = sent_timestamp
    data["senders"] = list(senders or [])
    data["recipients"] = list(recipients or [])
    if subject is not None:
        data["subject"] = subject
    if preview is not None:
        data["preview"] = preview
    if attachments and (documents := [attachment(a) for a in attachments]):
        data["attachments"] = documents
    data["last_message_id"] = last_message_id or ""
    if message_count is not None:
        data["message_count"] = message_count
    if size is not None:
        data["size"] = size
    if updated_at is not None:
        data["updated_at"] = updated_at
    if created_at is not None:
        data["created_at"] = created_at
    return data


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
