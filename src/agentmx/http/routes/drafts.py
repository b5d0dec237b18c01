"""Drafts: edited under /v0/inboxes/{inbox_id}/drafts, read also at /v0/drafts and /v0/pods/{pod_id}/drafts."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from agentmx.errors import NotFound
from agentmx.http import wire, wire_drafts
from agentmx.http.bodies import Body, given, parse
from agentmx.http.deps import (
    CallerDep,
    RuntimeDep,
    json_body,
    query_bool,
    query_datetime,
    query_int,
    query_list,
    single_header,
)
from agentmx.http.routes.messages import base_url
from agentmx.services import downloads, draft_send, drafts
from agentmx.services.caller import Caller
from agentmx.services.pagination import check_limit
from agentmx.services.runtime import Runtime

router = APIRouter()


Addresses = str | list[str] | None


class SendAttachment(Body):
    filename: str | None = None
    content_type: str | None = None
    content_disposition: str | None = None
    content_id: str | None = None
    content: str | None = None
    url: str | None = None


class CreateDraft(Body):
    labels: list[str] | None = None
    reply_to: Addresses = None
    to: Addresses = None
    cc: Addresses = None
    bcc: Addresses = None
    subject: str | None = None
    text: str | None = None
    html: str | None = None
    attachments: list[SendAttachment] | None = None
    in_reply_to: str | None = None
    forward_of: str | None = None
    reply_all: bool | None = None
    send_at: str | None = None
    client_id: str | None = None


class UpdateDraft(Body):
    reply_to: Addresses = None
    to: Addresses = None
    cc: Addresses = None
    bcc: Addresses = None
    subject: str | None = None
    text: str | None = None
    html: str | None = None
    add_attachments: list[SendAttachment] | None = None
    remove_attachments: list[str] | None = None
    add_labels: list[str] | None = None
    remove_labels: list[str] | None = None
    send_at: str | None = None


class SendDraft(Body):
    add_labels: str | list[str] | None = None
    remove_labels: str | list[str] | None = None


async def _read_body(request: Request) -> Any:
    """Draft bodies carry base64 attachments: the 6 MB request cap of sends applies."""
    return await json_body(request, fix="Use url attachments for large files.")


def _as_list(value: str | list[str] | None) -> list[str] | None:
    return [value] if isinstance(value, str) else value


def _attachment_inputs(items: list[SendAttachment] | None) -> list[drafts.AttachmentInput]:
    return [drafts.AttachmentInput(**item.model_dump()) for item in items or []]


async def _list(
    request: Request, rt: Runtime, caller: Caller, *, inbox_id: str | None = None, pod_id: str | None = None
) -> dict[str, Any]:
    caller.require("draft_read")
    if pod_id is not None:
        caller.require_pod_access(pod_id)
    limit = check_limit(query_int(request, "limit"))
    async with rt.db.read() as s:
        page = await drafts.list_drafts(
            s,
            caller,
            inbox_id=inbox_id,
            pod_id=pod_id,
            limit=limit,
            page_token=request.query_params.get("page_token"),
            labels=query_list(request, "labels"),
            before=query_datetime(request, "before"),
            after=query_datetime(request, "after"),
            ascending=query_bool(request, "ascending"),
        )
    items = [wire_drafts.draft_item(d) for d in page.items]
    return wire.page("drafts", items, page.limit, page.next_page_token)


async def _get(
    rt: Runtime, caller: Caller, draft_id: str, *, inbox_id: str | None = None, pod_id: str | None = None
) -> dict[str, Any]:
    caller.require("draft_read")
    if pod_id is not None:
        caller.require_pod_access(pod_id)
    async with rt.db.read() as s:
        draft = await drafts.get_draft(s, caller, draft_id, inbox_id=inbox_id, pod_id=pod_id)
    return wire_drafts.draft(draft)


async def _attachment(
    request: Request,
    rt: Runtime,
    caller: Caller,
    draft_id: str,
    attachment_id: str,
    *,
    inbox_id: str | None = None,
    pod_id: str | None = None,
) -> dict[str, Any]:
    caller.require("draft_read")
    if pod_id is not None:
        caller.require_pod_access(pod_id)
    async with rt.db.read() as s:
        draft = await drafts.get_draft(s, caller, draft_id, inbox_id=inbox_id, pod_id=pod_id)
    att = next((a for a in draft.attachments if a.id == attachment_id), None)
    if att is None:
        raise NotFound("Attachment not found")
    url, expires_at = downloads.make_url(
        rt.secret,
        base_url(request, rt),
        att.blob_key,
        att.content_type,
        att.filename,
        rt.settings.download_url_ttl,
    )
    return wire_drafts.attachment_response(att, url, expires_at)


# Inbox scope: the only place drafts are written.
@router.get("/v0/inboxes/{inbox_id}/drafts")
async def list_inbox_drafts(
    inbox_id: str, request: Request, rt: RuntimeDep, caller: CallerDep
) -> dict[str, Any]:
    return await _list(request, rt, caller, inbox_id=inbox_id)


@router.post("/v0/inboxes/{inbox_id}/drafts")
async def create_draft(inbox_id: str, request: Request, rt: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    caller.require("draft_create")
    body = parse(CreateDraft, await _read_body(request))
    new = drafts.NewDraft(
        labels=body.labels,
        reply_to=_as_list(body.reply_to),
        to=_as_list(body.to),
        cc=_as_list(body.cc),
        bcc=_as_list(body.bcc),
        subject=body.subject,
        text=body.text,
        html=body.html,
        in_reply_to=body.in_reply_to,
        forward_of=body.forward_of,
        reply_all=body.reply_all,
        send_at=body.send_at,
        client_id=body.client_id,
    )
    # Every refusal, and a retry's existing draft, before any attachment is fetched.
    async with rt.db.read() as s:
        existing = await drafts.check_create(s, caller, inbox_id, new)
        if existing is not None:
            return wire_drafts.draft(existing)
    new.attachments = await drafts.store_attachments(rt, _attachment_inputs(body.attachments))
    async with rt.db.transaction() as s:
        draft = await drafts.create_draft(s, rt, caller, inbox_id, new)
        out = wire_drafts.draft(draft)
    return out


@router.get("/v0/inboxes/{inbox_id}/drafts/{draft_id}")
async def get_inbox_draft(inbox_id: str, draft_id: str, rt: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    return await _get(rt, caller, draft_id, inbox_id=inbox_id)


@router.patch("/v0/inboxes/{inbox_id}/drafts/{draft_id}")
async def update_draft(
    inbox_id: str, draft_id: str, request: Request, rt: RuntimeDep, caller: CallerDep
) -> dict[str, Any]:
    caller.require("draft_update")
    body = parse(UpdateDraft, await _read_body(request))
    changes = drafts.DraftChanges(
        remove_attachments=body.remove_attachments,
        add_labels=body.add_labels,
        remove_labels=body.remove_labels,
    )
    for name in ("reply_to", "to", "cc", "bcc"):
        if given(body, name):
            setattr(changes, name, _as_list(getattr(body, name)))
    for name in ("subject", "text", "html"):
        if given(body, name):
            setattr(changes, name, getattr(body, name))
    if given(body, "send_at"):
        changes.send_at = body.send_at
    adding = _attachment_inputs(body.add_attachments)
    async with rt.db.read() as s:  # every refusal before any attachment is fetched
        await drafts.check_update(s, caller, inbox_id, draft_id, changes, len(adding))
    changes.add_attachments = await drafts.store_attachments(rt, adding)
    async with rt.db.transaction() as s:
        draft = await drafts.update_draft(s, rt, caller, inbox_id, draft_id, changes)
        out = wire_drafts.draft(draft)
    return out


@router.delete("/v0/inboxes/{inbox_id}/drafts/{draft_id}", status_code=204)
async def delete_draft(inbox_id: str, draft_id: str, rt: RuntimeDep, caller: CallerDep) -> Response:
    caller.require("draft_delete")
    async with rt.db.transaction() as s:
        await drafts.delete_draft(s, caller, inbox_id, draft_id)
    return Response(status_code=204)


@router.post("/v0/inboxes/{inbox_id}/drafts/{draft_id}/send")
async def send_draft(
    inbox_id: str, draft_id: str, request: Request, rt: RuntimeDep, caller: CallerDep
) -> dict[str, Any]:
    caller.require("draft_send")
    body = parse(SendDraft, await json_body(request))
    return await draft_send.send_now(
        rt,
        caller,
        inbox_id,
        draft_id,
        add_labels=_as_list(body.add_labels) or [],
        remove_labels=_as_list(body.remove_labels) or [],
        idempotency_key=single_header(request, "Idempotency-Key"),
    )


@router.get("/v0/inboxes/{inbox_id}/drafts/{draft_id}/attachments/{attachment_id}")
async def get_inbox_draft_attachment(
    inbox_id: str, draft_id: str, attachment_id: str, request: Request, rt: RuntimeDep, caller: CallerDep
) -> dict[str, Any]:
    return await _attachment(request, rt, caller, draft_id, attachment_id, inbox_id=inbox_id)


# Organization scope (read-only).
@router.get("/v0/drafts")
async def list_org_drafts(request: Request, rt: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    return await _list(request, rt, caller)


@router.get("/v0/drafts/{draft_id}")
async def get_org_draft(draft_id: str, rt: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    return await _get(rt, caller, draft_id)


@router.get("/v0/drafts/{draft_id}/attachments/{attachment_id}")
async def get_org_draft_attachment(
    draft_id: str, attachment_id: str, request: Request, rt: RuntimeDep, caller: CallerDep
) -> dict[str, Any]:
    return await _attachment(request, rt, caller, draft_id, attachment_id)


# Pod scope (read-only).
@router.get("/v0/pods/{pod_id}/drafts")
async def list_pod_drafts(pod_id: str, request: Request, rt: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    return await _list(request, rt, caller, pod_id=pod_id)


@router.get("/v0/pods/{pod_id}/drafts/{draft_id}")
async def get_pod_draft(pod_id: str, draft_id: str, rt: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    return await _get(rt, caller, draft_id, pod_id=pod_id)


@router.get("/v0/pods/{pod_id}/drafts/{draft_id}/attachments/{attachment_id}")
async def get_pod_draft_attachment(
    pod_id: str, draft_id: str, attachment_id: str, request: Request, rt: RuntimeDep, caller: CallerDep
) -> dict[str, Any]:
    return await _attachment(request, rt, caller, draft_id, attachment_id, pod_id=pod_id)
