"""Turning a draft into a message: POST …/drafts/{id}/send and the scheduled ``send_draft`` job.

Exactly once: the send and the deletion of the draft commit in one transaction that holds the
draft row locked (PostgreSQL ``FOR UPDATE``; SQLite serialises writers), and every path re-checks
that the draft still exists under that lock. So whichever of a manual send, a scheduled job, or a
job racing in another process commits first sends; the others find no draft and stop.

The scheduled path first marks the draft ``sending`` in its own short transaction (edits then get
409), so the send itself may take as long as it needs. A failure the client must fix (rejected
recipient, no recipients) leaves the draft with ``send_status="failed"`` and is reported as
``message.rejected`` (``draft_rejection``); a failure of the server's own (full storage, the database)
is retried first, and reported the same way once the attempts are used up.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from agentmx.db.models import Draft, Inbox, Message
from agentmx.db.row_locks import pin_inboxes
from agentmx.db.types import utcnow
from agentmx.errors import AgentMXError, Conflict, RateLimited, TemporaryFailure
from agentmx.jobs.registry import RetryAt, failures, handler
from agentmx.mail.compose import OutAttachment
from agentmx.services import blob_bytes, drafts, idempotency, jobs, limits
from agentmx.services.caller import Caller
from agentmx.services.draft_rejection import record_rejected_draft
from agentmx.services.inboxes import get_inbox
from agentmx.services.runtime import Runtime
from agentmx.services.sending import OutgoingMessage, check_send, send_message

log = logging.getLogger("agentmx.drafts")

# Unexpected errors and temporary failures (database, full blob store) are retried by the job runner this many times before
# the draft is marked failed, so a draft is never left "sending" for good.
MAX_SEND_ATTEMPTS = 4
# The reason given for a failure of the server's own: its details are for the log, not for the client.
SERVER_FAILURE = "The server could not send the draft; set a new send_at to try again"


async def _source(session: AsyncSession, inbox_id: str, message_id: str | None) -> Message | None:
    """The replied-to / forwarded message, if it still exists (a deleted one sends as plain)."""
    if not message_id:
        return None
    return await session.scalar(
        select(Message).where(Message.inbox_id == inbox_id, Message.message_id == message_id)
    )


async def _attachments(rt: Runtime, session: AsyncSession, draft: Draft) -> list[OutAttachment]:
    return [
        OutAttachment(
            data=await blob_bytes.get(rt, att.blob_key, session),
            filename=att.filename,
            content_type=att.content_type,
            disposition=att.content_disposition,
            content_id=att.content_id,
        )
        for att in draft.attachments
    ]


async def _send_locked(
    session: AsyncSession,
    rt: Runtime,
    caller: Caller,
    draft: Draft,
    add_labels: list[str],
    remove_labels: list[str],
) -> Message:
    """Send ``draft`` (locked by the caller) and delete it, in the caller's transaction."""
    inbox = await session.get(Inbox, draft.inbox_id)
    assert inbox is not None  # drafts are deleted with their inbox
    remove = {label.strip().lower() for label in remove_labels}
    labels = [
        label
        for label in draft.label_names + [label.strip().lower() for label in add_labels]
        if label != drafts.SCHEDULED and label not in remove
    ]
    req = OutgoingMessage(
        to=list(draft.to),
        cc=list(draft.cc),
        bcc=list(draft.bcc),
        reply_to=list(draft.reply_to),
        subject=draft.subject,
        text=draft.text,
        html=draft.html,
        labels=list(dict.fromkeys(labels)),
        labels_field="add_labels",  # the draft's own labels passed its rules: a refusal is of these
        reply_to_message=await _source(session, inbox.id, draft.in_reply_to),
        reply_all=draft.reply_all,
        forward_of=await _source(session, inbox.id, draft.forward_of),
        as_given=True,
    )
    # Every rule (the send limit too) before the attachments are read back: a refusal reads none.
    checked = await check_send(session, rt, caller, inbox, req)
    req.attachments = await _attachments(rt, session, draft)
    message = await send_message(session, rt, caller, inbox, req, checked)
    await jobs.cancel(session, drafts.job_key(draft.id))
    await session.delete(draft)
    return message


async def _lock(session: AsyncSession, draft_id: str) -> Draft | None:
    return await session.scalar(select(Draft).where(Draft.id == draft_id).with_for_update())


async def send_now(
    rt: Runtime,
    caller: Caller,
    inbox_id: str,
    draft_id: str,
    *,
    add_labels: list[str],
    remove_labels: list[str],
    idempotency_key: str | None,
) -> dict[str, str]:
    """POST …/drafts/{draft_id}/send: works for any draft that is not being sent right now."""
    limits.check_count(add_labels, limits.MAX_LABELS, "add_labels", "labels")
    limits.check_count(remove_labels, limits.MAX_LABELS, "remove_labels", "labels")
    key = idempotency.parse_key(idempotency_key)
    fp = idempotency.fingerprint(
        "draft_send", inbox_id.strip().lower(), draft_id, sorted(add_labels), sorted(remove_labels)
    )
    if key is not None:
        # Keys are per organization and a replay's draft is gone: the inbox must be visible first,
        # so a key of another pod never gets this send's result (or a 409) for it.
        async with rt.db.read() as s:
            await get_inbox(s, caller, inbox_id)
    async with idempotency.idempotent(rt, caller, key, fp) as slot:
        if slot.replay is not None:
            return {"message_id": slot.replay["message_id"], "thread_id": slot.replay["thread_id"]}
        async with rt.db.transaction() as s:
            draft = await drafts.get_draft(s, caller, draft_id, inbox_id=inbox_id, for_update=True)
            if draft.send_status == "sending":
                raise Conflict("The draft is already being sent", fix="Wait: it becomes a message shortly.")
            message = await _send_locked(s, rt, caller, draft, add_labels, remove_labels)
            result = {"message_id": message.message_id, "thread_id": message.thread_id}
            await slot.complete(s, result)
        return result


async def _mark_failed(rt: Runtime, draft_id: str, reason: str, detail: str | None = None) -> None:
    log.warning("scheduled send of draft %s failed: %s", draft_id, detail or reason)
    async with rt.db.transaction() as s:
        draft = await _lock(s, draft_id)
        if draft is None or draft.send_status != "sending":
            return
        draft.send_status = "failed"
        draft.labels = [label for label in draft.labels if label.label != drafts.SCHEDULED]
        draft.updated_at = utcnow()
        await record_rejected_draft(s, rt, draft, reason)


@handler(drafts.JOB_KIND)
async def send_scheduled(rt: Runtime, payload: dict[str, Any], attempts: int) -> None:
    draft_id = str(payload["draft_id"])
    async with rt.db.transaction() as s:
        draft = await _lock(s, draft_id)
        if draft is None or draft.send_at is None or draft.send_status not in ("scheduled", "sending"):
            return  # sent, deleted or unscheduled meanwhile
        if draft.send_at > utcnow():
            # Never early: send_at moved later (its own job exists too) or the clock is behind.
            raise RetryAt(draft.send_at, "send_at not reached")
        # "sending" already means an earlier attempt of this job stopped before committing.
        draft.send_status = "sending"
        organization_id, inbox_id = draft.organization_id, draft.inbox_id
    caller = Caller(organization_id=organization_id)
    try:
        async with rt.db.transaction() as s:
            await pin_inboxes(s, [inbox_id])  # db/row_locks.py: inbox before its drafts
            draft = await _lock(s, draft_id)
            if draft is None or draft.send_status != "sending":
                return
            await _send_locked(s, rt, caller, draft, [], [])
    except RateLimited as exc:  # the inbox's send limit: not the draft's fault, it goes when there is room
        await _wait_for_room(rt, draft_id, exc)
    except TemporaryFailure as exc:  # storage full, a dependency down: another attempt may succeed
        await _retry_or_fail(rt, payload, draft_id, exc)
    except AgentMXError as exc:  # the draft itself is at fault: the client must change it
        await _mark_failed(rt, draft_id, exc.message)
    except Exception as exc:
        await _retry_or_fail(rt, payload, draft_id, exc)


async def _wait_for_room(rt: Runtime, draft_id: str, exc: RateLimited) -> None:
    """Back to scheduled (editable, as before it was due), and this job again in Retry-After seconds."""
    async with rt.db.transaction() as s:
        draft = await _lock(s, draft_id)
        if draft is None or draft.send_status != "sending":
            return
        draft.send_status = "scheduled"
    raise RetryAt(utcnow() + timedelta(seconds=exc.retry_after), exc.message)


async def _retry_or_fail(rt: Runtime, payload: dict[str, Any], draft_id: str, exc: Exception) -> None:
    """Re-raise for the job runner's retry, or mark the draft failed once the attempts are used up."""
    if failures(payload) + 1 >= MAX_SEND_ATTEMPTS:  # failures, not the send_at reschedules
        reason = exc.message if isinstance(exc, TemporaryFailure) else SERVER_FAILURE
        await _mark_failed(rt, draft_id, reason, repr(exc))
        return
    raise exc
