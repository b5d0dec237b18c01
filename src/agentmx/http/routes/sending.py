"""POST …/messages/send, …/{message_id}/reply, …/reply-all, …/forward.

Registered before the messages router so ``/messages/send`` never reaches a ``{message_id}`` route.
Message-IDs may contain ``/``: the id is matched greedily up to the fixed suffix.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from sqlalchemy.ext.asyncio import AsyncSession

from agentmx.db.models import Inbox
from agentmx.http.bodies import Body, parse
from agentmx.http.deps import CallerDep, RuntimeDep, json_body, single_header
from agentmx.services import idempotency, messages, send_attachments
from agentmx.services.caller import Caller
from agentmx.services.inboxes import get_inbox
from agentmx.services.runtime import Runtime
from agentmx.services.sending import OutgoingMessage, check_before_fetch, commit_send, prepare_send

router = APIRouter()

Addresses = str | list[str] | None


class SendAttachmentBody(Body):
    filename: str | None = None
    content_type: str | None = None
    content_disposition: Literal["inline", "attachment"] | None = None
    content_id: str | None = None
    content: str | None = None
    url: str | None = None


class _Common(Body):
    labels: str | list[str] | None = None
    reply_to: Addresses = None
    text: str | None = None
    html: str | None = None
    attachments: list[SendAttachmentBody] | None = None
    headers: dict[str, str] | None = None
    track_opens: bool | None = None


class SendBody(_Common):
    to: Addresses = None
    cc: Addresses = None
    bcc: Addresses = None
    subject: str | None = None


class ReplyBody(_Common):
    to: Addresses = None
    cc: Addresses = None
    bcc: Addresses = None
    reply_all: bool | None = None


class ReplyAllBody(_Common):
    pass


def _list(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


async def _read_body(request: Request) -> Any:
    return await json_body(request, fix="Use url attachments for large files.")


async def _send(
    request: Request,
    rt: Runtime,
    caller: Caller,
    inbox_id: str,
    endpoint: str,
    body: _Common,
    raw_body: Any,
    message_id: str | None = None,
) -> dict[str, str]:
    key = idempotency.parse_key(single_header(request, "Idempotency-Key"))
    fp = idempotency.fingerprint(endpoint, inbox_id.strip().lower(), message_id, raw_body)
    # 404 before any attachment is fetched, and before a replay: keys are per organization, so
    # another pod's key repeating a send must not get its result (or a 409) for an inbox it cannot see.
    async with rt.db.read() as s:
        await get_inbox(s, caller, inbox_id)
    async with idempotency.idempotent(rt, caller, key, fp) as slot:
        if slot.replay is not None:
            return {"message_id": slot.replay["message_id"], "thread_id": slot.replay["thread_id"]}
        specs = [send_attachments.AttachmentSpec(**a.model_dump()) for a in body.attachments or []]
        checked = None
        if any(spec.url is not None for spec in specs):
            # Every refusal that needs no attachment bytes comes before the first URL is fetched.
            checked = send_attachments.check(specs)
            async with rt.db.read() as s:
                inbox = await get_inbox(s, caller, inbox_id)
                req = await _request(s, caller, inbox, endpoint, body, message_id)
                await check_before_fetch(s, rt, caller, inbox, req)
        attachments = await send_attachments.resolve(
            specs,
            checked=checked,
            allow_private=rt.settings.attachment_url_allow_private,
            timeout=rt.settings.attachment_url_timeout,
        )
        # Rules (again: the downloads took time), rendering and blob fsyncs in a read transaction;
        # only the rows take the write lock.
        async with rt.db.read() as s:
            inbox = await get_inbox(s, caller, inbox_id)
            req = await _request(s, caller, inbox, endpoint, body, message_id)
            req.attachments = attachments
            prepared = await prepare_send(s, rt, caller, inbox, req)
        async with rt.db.transaction() as s:
            inbox = await get_inbox(s, caller, inbox_id)
            message = await commit_send(s, rt, inbox, prepared)
            result = {"message_id": message.message_id, "thread_id": message.thread_id}
            await slot.complete(s, result)
        return result


async def _request(
    s: AsyncSession, caller: Caller, inbox: Inbox, endpoint: str, body: _Common, message_id: str | None
) -> OutgoingMessage:
    """The send as the services take it, without attachments; 404 for an unknown replied-to message."""
    req = OutgoingMessage(
        to=_list(getattr(body, "to", None)),
        cc=_list(getattr(body, "cc", None)),
        bcc=_list(getattr(body, "bcc", None)),
        reply_to=_list(body.reply_to),
        subject=getattr(body, "subject", None),
        text=body.text,
        html=body.html,
        headers=dict(body.headers or {}),
        labels=_list(body.labels),
    )
    if endpoint in ("reply", "reply-all"):
        assert message_id is not None
        req.reply_to_message = await messages.get_message(s, caller, inbox, message_id)
        req.reply_all = endpoint == "reply-all" or bool(getattr(body, "reply_all", False))
    elif endpoint == "forward":
        assert message_id is not None
        req.forward_of = await messages.get_message(s, caller, inbox, message_id)
    return req


@router.post("/v0/inboxes/{inbox_id}/messages/send")
async def send(inbox_id: str, request: Request, rt: RuntimeDep, caller: CallerDep) -> dict[str, str]:
    caller.require("message_send")
    raw = await _read_body(request)
    return await _send(request, rt, caller, inbox_id, "send", parse(SendBody, raw), raw)


@router.post("/v0/inboxes/{inbox_id}/messages/{message_id:path}/reply")
async def reply(
    inbox_id: str, message_id: str, request: Request, rt: RuntimeDep, caller: CallerDep
) -> dict[str, str]:
    caller.require("message_send")
    raw = await _read_body(request)
    return await _send(request, rt, caller, inbox_id, "reply", parse(ReplyBody, raw), raw, message_id)


@router.post("/v0/inboxes/{inbox_id}/messages/{message_id:path}/reply-all")
async def reply_all(
    inbox_id: str, message_id: str, request: Request, rt: RuntimeDep, caller: CallerDep
) -> dict[str, str]:
    caller.require("message_send")
    raw = await _read_body(request)
    return await _send(request, rt, caller, inbox_id, "reply-all", parse(ReplyAllBody, raw), raw, message_id)


@router.post("/v0/inboxes/{inbox_id}/messages/{message_id:path}/forward")
async def forward(
    inbox_id: str, message_id: str, request: Request, rt: RuntimeDep, caller: CallerDep
) -> dict[str, str]:
    caller.require("message_send")
    caller.require("message_read")  # a forward carries the original's body and attachments away
    raw = await _read_body(request)
    return await _send(request, rt, caller, inbox_id, "forward", parse(SendBody, raw), raw, message_id)
