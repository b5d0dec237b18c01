"""Reading and labelling messages: /v0/inboxes/{inbox_id}/messages…, and the signed download links.

Message ids contain ``<>@+`` and may contain ``/``, so the per-message routes take the rest of the
path and split off the known suffixes (``/raw``, ``/attachments/{id}``). Sending lives in sending.py.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request, Response

from agentmx.db.models import Attachment, Message
from agentmx.errors import NotFound
from agentmx.http import wire, wire_mail
from agentmx.http.bodies import Body, parse
from agentmx.http.deps import (
    CallerDep,
    RuntimeDep,
    json_body,
    query_bool,
    query_datetime,
    query_int,
    query_list,
)
from agentmx.http.open_file_response import OpenFileResponse
from agentmx.services import blob_bytes, downloads, inboxes, mail_lists, mail_reads, messages
from agentmx.services.caller import Caller
from agentmx.services.messages import MessageFilters
from agentmx.services.pagination import MAX_LIMIT, check_limit
from agentmx.services.runtime import Runtime

router = APIRouter()

PREFIX = "/v0/inboxes/{inbox_id}/messages"
ATTACHMENT_SUFFIX = re.compile(r"^(?P<mid>.+)/attachments/(?P<aid>att_[A-Za-z0-9]+)$")
SEARCH_MAX = 100


class UpdateMessage(Body):
    add_labels: str | list[str] | None = None
    remove_labels: str | list[str] | None = None


class BatchGet(Body):
    message_ids: list[str]


class BatchUpdate(Body):
    message_ids: list[str]
    add_labels: str | list[str] | None = None
    remove_labels: str | list[str] | None = None


def as_list(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else value


def base_url(request: Request, rt: Runtime) -> str:
    return rt.settings.public_url or str(request.base_url)


def include_flags(request: Request) -> dict[str, bool]:
    return {
        name: query_bool(request, f"include_{name}")
        for name in ("spam", "blocked", "unauthenticated", "trash")
    }


@router.get(PREFIX, response_model=dict[str, Any])
async def list_messages(inbox_id: str, request: Request, rt: RuntimeDep, caller: CallerDep) -> Response:
    caller.require("message_read")
    filters = MessageFilters(
        labels=query_list(request, "labels") or [],
        before=query_datetime(request, "before"),
        after=query_datetime(request, "after"),
        include=include_flags(request),
        from_=query_list(request, "from") or [],
        to=query_list(request, "to") or [],
        subject=query_list(request, "subject") or [],
    )
    limit = check_limit(
        query_int(request, "limit"), maximum=SEARCH_MAX if filters.has_text_filters else MAX_LIMIT
    )
    async with rt.db.read_driver() as conn:
        page = await mail_lists.list_messages(
            conn,
            caller,
            inbox_id,
            filters,
            limit=limit,
            page_token=request.query_params.get("page_token"),
            ascending=query_bool(request, "ascending"),
        )
    items = [wire_mail.message_list_item(row) for row in page.items]
    return wire.json_response(wire.page("messages", items, page.limit, page.next_page_token))


@router.get(PREFIX + "/search")
async def search_messages(
    inbox_id: str, request: Request, rt: RuntimeDep, caller: CallerDep
) -> dict[str, Any]:
    caller.require("message_read")
    q = request.query_params.get("q", "")
    limit = check_limit(query_int(request, "limit"), maximum=SEARCH_MAX)
    async with rt.db.read(may_scan=True) as s:
        inbox = await inboxes.get_inbox(s, caller, inbox_id)
        page = await messages.search_messages(
            s,
            caller,
            inbox,
            q=q,
            limit=limit,
            page_token=request.query_params.get("page_token"),
            before=query_datetime(request, "before"),
            after=query_datetime(request, "after"),
        )
    items = []
    for m in page.items:
        item = wire_mail.message(m, full=False)
        found = messages.highlights(m, q)
        if found:
            item["highlights"] = found
        items.append(item)
    return wire.page("messages", items, page.limit, page.next_page_token)


@router.post(PREFIX + "/batch-get")
async def batch_get(inbox_id: str, request: Request, rt: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    caller.require("message_read")
    body = parse(BatchGet, await json_body(request))
    async with rt.db.read() as s:
        inbox = await inboxes.get_inbox(s, caller, inbox_id)
        found = await messages.batch_get(s, caller, inbox, body.message_ids)
    return {
        "limit": len(body.message_ids),
        "count": len(found),
        "messages": [wire_mail.message(m, full=False) for m in found],
    }


@router.post(PREFIX + "/batch-update")
async def batch_update(inbox_id: str, request: Request, rt: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    caller.require("message_update")
    body = parse(BatchUpdate, await json_body(request))
    async with rt.db.transaction() as s:
        inbox = await inboxes.get_inbox(s, caller, inbox_id)
        updated = await messages.batch_update(
            s, caller, inbox, body.message_ids, as_list(body.add_labels), as_list(body.remove_labels)
        )
        updates = [{"message_id": m.message_id, "labels": m.label_names} for m in updated]
    return {"limit": len(body.message_ids), "count": len(updates), "updates": updates}


async def _envelope(rt: Runtime, caller: Caller, inbox_id: str, message_id: str) -> Message:
    """A visible message without its bodies: what its raw and attachment links need."""
    async with rt.db.read() as s:
        inbox = await inboxes.get_inbox(s, caller, inbox_id)
        return await messages.get_message(s, caller, inbox, message_id, bodies=False)


def _attachment_response(request: Request, rt: Runtime, attachment: Attachment) -> dict[str, Any]:
    url, expires = downloads.make_url(
        rt.secret,
        base_url(request, rt),
        attachment.blob_key,
        attachment.content_type,
        attachment.filename,
        rt.settings.download_url_ttl,
    )
    return {**wire_mail.attachment(attachment), "download_url": url, "expires_at": wire.iso(expires)}


# GET is served by http/hot_routes.py, which calls this function; this declaration documents it.
@router.get(PREFIX + "/{rest:path}", response_model=Any)
async def get_message(
    inbox_id: str, rest: str, request: Request, rt: RuntimeDep, caller: CallerDep
) -> Response:
    caller.require("message_read")
    if rest.endswith("/raw"):
        message = await _envelope(rt, caller, inbox_id, rest[: -len("/raw")])
        if message.blob_key is None:
            raise NotFound("Raw message not found")
        url, expires = downloads.make_url(
            rt.secret,
            base_url(request, rt),
            message.blob_key,
            "message/rfc822",
            "message.eml",
            rt.settings.download_url_ttl,
        )
        return wire.json_response(
            {
                "message_id": message.message_id,
                "size": message.size,
                "download_url": url,
                "expires_at": wire.iso(expires),
            }
        )
    if match := ATTACHMENT_SUFFIX.match(rest):
        message = await _envelope(rt, caller, inbox_id, match["mid"])
        async with rt.db.read() as s:
            attachment = await messages.get_attachment(s, message, match["aid"])
        return wire.json_response(_attachment_response(request, rt, attachment))
    async with rt.db.read_driver() as conn:
        found = await mail_reads.get_message(conn, caller, inbox_id, rest)
    document = wire_mail.message_document(found.row, found.labels, found.attachments, True, wire.as_is)
    return wire.json_response(document)


@router.patch(PREFIX + "/{message_id:path}")
async def update_message(
    inbox_id: str, message_id: str, request: Request, rt: RuntimeDep, caller: CallerDep
) -> dict[str, Any]:
    caller.require("message_update")
    body = parse(UpdateMessage, await json_body(request))
    async with rt.db.transaction() as s:
        inbox = await inboxes.get_inbox(s, caller, inbox_id)
        message = await messages.update_message(
            s, caller, inbox, message_id, as_list(body.add_labels), as_list(body.remove_labels)
        )
        result = {"message_id": message.message_id, "labels": message.label_names}
    return result


@router.delete(PREFIX + "/{message_id:path}", status_code=204)
async def delete_message(inbox_id: str, message_id: str, rt: RuntimeDep, caller: CallerDep) -> Response:
    caller.require("message_delete")
    async with rt.db.transaction() as s:
        inbox = await inboxes.get_inbox(s, caller, inbox_id)
        await messages.delete_message(s, caller, inbox, message_id)
    return Response(status_code=204)


def _header_safe(content_type: str) -> str:
    """A stored type that cannot be an HTTP header (a CR dropped the connection, "€" was a 500: rows
    stored before mail/parse checked types, a draft's given type) is served as bytes."""
    printable = content_type.isascii() and content_type.isprintable()
    return content_type if printable else "application/octet-stream"


# HEAD too: HTTP requires it wherever GET is served (a client checking a link's size and type).
@router.api_route(downloads.PATH + "{token}", methods=["GET", "HEAD"])
async def download(token: str, rt: RuntimeDep) -> Response:
    """Follows a signed download_url: no API key, the signature and expiry are the authorisation."""
    found = downloads.resolve(rt.secret, token)
    content = await blob_bytes.open_for_reading(rt, found.blob_key)
    if content is None:
        raise NotFound("Download not found")
    # Bytes a stranger sent, on the API's own origin: saved, never rendered or sniffed by a browser.
    # safe="": RFC 5987 leaves "/" out of a filename*'s characters (quote keeps it by default).
    name = quote(found.filename, safe="") if found.filename else None
    disposition = f"attachment; filename*=UTF-8''{name}" if name else "attachment"
    headers = {
        # As stored, never with media_type: Starlette adds "charset=utf-8" to text/*, which is false for
        # a Latin-1 or Shift JIS text attachment (the part's charset is not kept).
        "Content-Type": _header_safe(found.content_type),
        "Content-Disposition": disposition,
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "sandbox",
    }
    if isinstance(content, bytes):
        return Response(content=content, headers=headers)
    # A file, open already (the collector may remove its name now): sent a chunk at a time.
    return OpenFileResponse(content.file, content.size, headers)
