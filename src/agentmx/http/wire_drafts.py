"""Draft wire shapes (SDK 2.0.18 Draft, DraftItem, AttachmentResponse)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from agentmx.db.models import Draft, DraftAttachment
from agentmx.http.wire import drop_none, iso


def attachment(row: DraftAttachment) -> dict[str, Any]:
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


def attachment_response(row: DraftAttachment, download_url: str, expires_at: datetime) -> dict[str, Any]:
    return {**attachment(row), "download_url": download_url, "expires_at": iso(expires_at)}


def _list(values: list[str] | None) -> list[str] | None:
    return list(values) if values else None


def draft_item(row: Draft) -> dict[str, Any]:
    return drop_none(
        {
            "inbox_id": row.inbox_id,
            "draft_id": row.id,
            "labels": sorted(row.label_names),
            "to": _list(row.to),
            "cc": _list(row.cc),
            "bcc": _list(row.bcc),
            "subject": row.subject,
            "preview": row.preview,
            "attachments": [attachment(a) for a in row.attachments] or None,
            "in_reply_to": row.in_reply_to,
            "forward_of": row.forward_of,
            "send_status": row.send_status,
            "send_at": iso(row.send_at),
            "updated_at": iso(row.updated_at),
        }
    )


def draft(row: Draft) -> dict[str, Any]:
    return drop_none(
        {
            "inbox_id": row.inbox_id,
            "draft_id": row.id,
            "client_id": row.client_id,
            "labels": sorted(row.label_names),
            "reply_to": _list(row.reply_to),
            "to": _list(row.to),
            "cc": _list(row.cc),
            "bcc": _list(row.bcc),
            "subject": row.subject,
            "preview": row.preview,
            "text": row.text,
            "html": row.html,
            "attachments": [attachment(a) for a in row.attachments] or None,
            "in_reply_to": row.in_reply_to,
            "forward_of": row.forward_of,
            "references": _list(row.references),
            "send_status": row.send_status,
            "send_at": iso(row.send_at),
            "updated_at": iso(row.updated_at),
            "created_at": iso(row.created_at),
        }
    )
