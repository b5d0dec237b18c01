"""Drafts: create (plain, reply, forward), read, list, edit, delete, and the send_at schedule.

A draft's kind is fixed at creation. Replies derive recipients, subject and threading from the
replied-to message right away (the caller sees and may edit them, and they are sent as shown);
forwards derive subject and threading, and the forwarded body and attachments are merged in only
at send time.

Scheduling: a draft with ``send_at`` carries label ``scheduled``, ``send_status="scheduled"``
and one ``send_draft`` job keyed ``draft:<id>`` with ``run_at=send_at``. Every change of
``send_at`` cancels and re-enqueues that job in the same transaction, so the job row and the
draft never disagree. A ``send_at`` in the past is accepted and the draft is sent at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from email.utils import getaddresses
from typing import Any

from sqlalchemy import delete, exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from agentmx.db.models import Draft, DraftAttachment, DraftLabel, Inbox, Job, Message
from agentmx.db.row_locks import RowLock
from agentmx.db.types import utcnow
from agentmx.db.unique import flush_unless_taken
from agentmx.errors import Conflict, NotFound, ValidationFailed
from agentmx.ids import new_id
from agentmx.mail.compose import forward_subject, reply_subject, thread_references, valid_address
from agentmx.mail.parse import body_preview
from agentmx.services import jobs, limits, send_attachments
from agentmx.services.caller import Caller
from agentmx.services.inboxes import get_inbox, inbox_cleanup
from agentmx.services.mailstore import SYSTEM_LABELS
from agentmx.services.messages import unreadable_labels
from agentmx.services.pagination import Page, paginate
from agentmx.services.pods import get_pod
from agentmx.services.runtime import Runtime
from agentmx.services.sending import check_recipient_count, reply_recipients
from agentmx.services.validation import check_client_id, fail, one_line, utc_time

JOB_KIND = "send_draft"
SCHEDULED = "scheduled"
MAX_LABEL = 256


def job_key(draft_id: str) -> str:
    return f"draft:{draft_id}"


# ---------------------------------------------------------------------------------------------
# Input normalisation


@dataclass(frozen=True)
class AttachmentInput:
    """One SendAttachment as given by the client: exactly one of ``content`` (base64) or ``url``."""

    filename: str | None = None
    content_type: str | None = None
    content_disposition: str | None = None
    content_id: str | None = None
    content: str | None = None
    url: str | None = None


@dataclass(frozen=True)
class StoredAttachment:
    """An attachment whose bytes are already in the blob store."""

    filename: str | None
    content_type: str
    content_disposition: str | None
    content_id: str | None
    size: int
    blob_key: str


async def store_attachments(rt: Runtime, inputs: list[AttachmentInput]) -> list[StoredAttachment]:
    """Decode or fetch each attachment (the send rules) and put its bytes in the blob store.

    Runs before the draft's transaction; an unused blob is harmless (the store is content-addressed).
    """
    specs = [send_attachments.AttachmentSpec(**vars(att)) for att in inputs]
    out: list[StoredAttachment] = []
    resolved = await send_attachments.resolve(
        specs,
        allow_private=rt.settings.attachment_url_allow_private,
        timeout=rt.settings.attachment_url_timeout,
    )
    for att in resolved:
        out.append(
            StoredAttachment(
                filename=att.filename,
                content_type=att.content_type or "application/octet-stream",
                content_disposition=att.disposition,
                content_id=att.content_id,
                size=len(att.data),
                blob_key=await rt.blobs.put(att.data),
            )
        )
    return out


def _addresses(values: list[str] | None, path: str) -> list[str]:
    if not values:
        return []
    out: list[str] = []
    for value in values:
        if not isinstance(value, str) or "\r" in value or "\n" in value:
            raise fail(path, "addresses must be strings")
        parsed = getaddresses([value])
        if not parsed or not all(valid_address(addr) for _, addr in parsed):
            raise fail(path, f"'{value}' is not a valid email address")
        out.append(value.strip())
    return out


def _subject(value: str | None) -> str | None:
    # A line break would end the header on the wire: the send, a scheduled one too, would fail.
    if value is not None and not one_line(value):
        raise fail("subject", "subject contains a line break")
    return value


def _labels(values: list[str] | None, path: str) -> list[str]:
    limits.check_count(values, limits.MAX_LABELS, path, "labels")
    out: list[str] = []
    for value in values or []:
        label = value.strip().lower()
        if not label or len(label) > MAX_LABEL:
            raise fail(path, "labels must be 1-256 characters")
        if label == SCHEDULED:
            raise fail(path, "the 'scheduled' label is managed by send_at")
        if label in SYSTEM_LABELS:
            # The message it becomes could not carry it: the send (a scheduled one too) would fail.
            raise fail(path, f"'{label}' is a system label")
        if label not in out:
            out.append(label)
    return out


def parse_send_at(value: str | None, path: str = "send_at") -> datetime | None:
    if value is None:
        return None
    try:
        return utc_time(value)
    except ValueError as exc:
        raise fail(path, "send_at must be an ISO-8601 datetime") from exc


# ---------------------------------------------------------------------------------------------
# Reading


def _visible(stmt: Any, caller: Caller) -> Any:
    stmt = stmt.where(Draft.organization_id == caller.organization_id)
    if caller.pod_id:
        stmt = stmt.where(Draft.pod_id == caller.pod_id)
    if caller.inbox_id:
        stmt = stmt.where(Draft.inbox_id == caller.inbox_id)
    return stmt


async def get_draft(
    session: AsyncSession,
    caller: Caller,
    draft_id: str,
    *,
    inbox_id: str | None = None,
    pod_id: str | None = None,
    for_update: bool = False,
) -> Draft:
    """A draft the caller may see, at inbox, pod or organization scope; 404 otherwise."""
    if inbox_id is not None:
        # Locking the draft: the inbox is pinned first (db/row_locks.py: inbox before its drafts).
        inbox = await get_inbox(session, caller, inbox_id, lock="pin" if for_update else None)
        inbox_id = inbox.id
    if pod_id is not None:
        await get_pod(session, caller, pod_id)
    stmt = _visible(select(Draft).where(Draft.id == draft_id), caller)
    if inbox_id is not None:
        stmt = stmt.where(Draft.inbox_id == inbox_id)
    if pod_id is not None:
        stmt = stmt.where(Draft.pod_id == pod_id)
    if for_update:
        stmt = stmt.with_for_update()
    draft = await session.scalar(stmt)
    if draft is None:
        raise NotFound("Draft not found")
    return draft


async def list_drafts(
    session: AsyncSession,
    caller: Caller,
    *,
    inbox_id: str | None = None,
    pod_id: str | None = None,
    limit: int,
    page_token: str | None,
    labels: list[str] | None = None,
    before: datetime | None = None,
    after: datetime | None = None,
    ascending: bool = False,
) -> Page[Draft]:
    stmt = _visible(select(Draft), caller)
    if inbox_id is not None:
        inbox = await get_inbox(session, caller, inbox_id)
        stmt = stmt.where(Draft.inbox_id == inbox.id)
    if pod_id is not None:
        await get_pod(session, caller, pod_id)
        stmt = stmt.where(Draft.pod_id == pod_id)
    for label in {value.strip().lower() for value in labels or []}:
        stmt = stmt.where(exists().where(DraftLabel.draft_pk == Draft.id, DraftLabel.label == label))
    if before is not None:
        stmt = stmt.where(Draft.updated_at < before)
    if after is not None:
        stmt = stmt.where(Draft.updated_at > after)
    return await paginate(
        session,
        stmt,
        kind="drafts",
        columns=[Draft.updated_at, Draft.id],
        limit=limit,
        page_token=page_token,
        ascending=ascending,
    )


async def source_message(
    session: AsyncSession, caller: Caller, inbox: Inbox, message_id: str, path: str
) -> Message:
    """The replied-to or forwarded message, in the draft's inbox and readable by the caller: a reply
    draft copies its subject and senders, a forward its body, so spam, blocked, unauthenticated or
    trashed mail needs its label_*_read permission here as on GET (messages.get_message)."""
    message = await session.scalar(
        select(Message).where(Message.inbox_id == inbox.id, Message.message_id == message_id.strip())
    )
    if message is None or set(message.label_names) & unreadable_labels(caller):
        raise NotFound(f"Message {message_id} ({path}) not found in inbox {inbox.id}")
    return message


# ---------------------------------------------------------------------------------------------
# Writing


def _set_labels(draft: Draft, labels: list[str]) -> None:
    wanted = list(dict.fromkeys(labels))
    current = {label.label: label for label in draft.labels}
    draft.labels = [current.get(name) or DraftLabel(label=name) for name in wanted]


def _require_send_permission(caller: Caller, send_at: datetime | None) -> None:
    """Scheduling a send, or editing a scheduled draft, is sending: without this a key lacking
    draft_send could send by giving send_at (now or past), or re-address a draft another key
    scheduled. Clearing send_at only stops a send, so draft_update covers it."""
    if send_at is not None:
        caller.require("draft_send")


def _schedule(draft: Draft, send_at: datetime | None) -> None:
    """Set ``send_at`` with its label and status; ``_sync_job`` then makes the job row match."""
    draft.send_at = send_at
    labels = [name for name in draft.label_names if name != SCHEDULED]
    if send_at is None:
        draft.send_status = None
    else:
        draft.send_status = SCHEDULED
        labels.append(SCHEDULED)
    _set_labels(draft, labels)


async def _sync_job(session: AsyncSession, rt: Runtime, draft: Draft) -> None:
    await jobs.cancel(session, job_key(draft.id))
    if draft.send_status == SCHEDULED and draft.send_at is not None:
        await jobs.enqueue(
            session, rt, JOB_KIND, {"draft_id": draft.id}, run_at=draft.send_at, key=job_key(draft.id)
        )


def _check_counts(draft: Draft, attachments_path: str) -> None:
    """The send's caps on the draft as it now stands: a draft past them could never be sent."""
    _check_caps(draft.to, draft.cc, draft.bcc, list(draft.attachments), draft.label_names, attachments_path)


def _check_caps(
    to: list[str], cc: list[str], bcc: list[str], attachments: list[Any], labels: list[str], path: str
) -> None:
    check_recipient_count(to, cc, bcc)  # distinct addresses, as a send counts them
    limits.check_count(attachments, limits.MAX_ATTACHMENTS, path, "attachments")
    labels = [name for name in labels if name != SCHEDULED]  # send_at's, not the caller's
    limits.check_count(labels, limits.MAX_LABELS, "labels", "labels")


def _set_attachments(draft: Draft, stored: list[StoredAttachment]) -> None:
    start = max((att.position for att in draft.attachments), default=-1) + 1
    for offset, att in enumerate(stored):
        draft.attachments.append(
            DraftAttachment(
                id=new_id("att"),
                position=start + offset,
                filename=att.filename,
                content_type=att.content_type,
                content_disposition=att.content_disposition,
                content_id=att.content_id,
                size=att.size,
                blob_key=att.blob_key,
            )
        )


@dataclass
class NewDraft:
    labels: list[str] | None = None
    reply_to: list[str] | None = None
    to: list[str] | None = None
    cc: list[str] | None = None
    bcc: list[str] | None = None
    subject: str | None = None
    text: str | None = None
    html: str | None = None
    attachments: list[StoredAttachment] | None = None
    in_reply_to: str | None = None
    forward_of: str | None = None
    reply_all: bool | None = None
    send_at: str | None = None  # as sent: parsed once the inbox is found (its 404 comes first)
    client_id: str | None = None


async def _inbox_and_retry(
    session: AsyncSession, caller: Caller, inbox_id: str, new: NewDraft, lock: RowLock | None = None
) -> tuple[Inbox, Draft | None]:
    """The inbox the caller may create ``new`` in, and the draft a retry (same ``client_id``) gets back."""
    inbox = await get_inbox(session, caller, inbox_id, lock=lock)
    _require_send_permission(caller, parse_send_at(new.send_at))
    check_client_id(new.client_id)
    existing = await _by_client_id(session, inbox, new.client_id) if new.client_id else None
    return inbox, existing


async def check_create(session: AsyncSession, caller: Caller, inbox_id: str, new: NewDraft) -> Draft | None:
    """Every refusal of ``create_draft`` that needs no attachment bytes, run before any URL is
    fetched; or the draft a retry (same ``client_id``) gets back, with nothing fetched."""
    inbox, existing = await _inbox_and_retry(session, caller, inbox_id, new)
    if existing is None:
        await _unsaved_draft(session, caller, inbox, new)  # not added to the session: only its checks count
    return existing


async def create_draft(
    session: AsyncSession, rt: Runtime, caller: Caller, inbox_id: str, new: NewDraft
) -> Draft:
    # The inbox pinned: not deleted under the new draft.
    inbox, existing = await _inbox_and_retry(session, caller, inbox_id, new, lock="pin")
    if existing is not None:
        return existing
    draft = await _unsaved_draft(session, caller, inbox, new)
    _set_attachments(draft, new.attachments or [])
    _check_counts(draft, "attachments")
    _schedule(draft, parse_send_at(new.send_at))
    if not await flush_unless_taken(session, draft):
        # A concurrent create with the same client_id (a retry racing its original) committed first.
        existing = await _by_client_id(session, inbox, new.client_id) if new.client_id else None
        if existing is None:
            raise Conflict("A draft with this client_id is being created")
        return existing
    await _sync_job(session, rt, draft)
    return draft


async def _unsaved_draft(session: AsyncSession, caller: Caller, inbox: Inbox, new: NewDraft) -> Draft:
    """The new draft without its attachments, every rule checked; not yet in ``session``."""
    if new.in_reply_to and new.forward_of:
        raise ValidationFailed(
            "in_reply_to and forward_of are mutually exclusive",
            [{"path": ["forward_of"], "message": "cannot be combined with in_reply_to"}],
        )
    if new.reply_all and (new.to or new.cc or new.bcc):
        raise ValidationFailed(
            "reply_all cannot be combined with to, cc or bcc",
            [{"path": ["reply_all"], "message": "cannot be combined with to/cc/bcc"}],
        )
    if new.reply_all and not new.in_reply_to:
        raise fail("reply_all", "reply_all needs in_reply_to")
    now = utcnow()
    draft = Draft(
        id=new_id("drf"),
        organization_id=inbox.organization_id,
        pod_id=inbox.pod_id,
        inbox_id=inbox.id,
        client_id=new.client_id,
        reply_to=_addresses(new.reply_to, "reply_to"),
        to=_addresses(new.to, "to"),
        cc=_addresses(new.cc, "cc"),
        bcc=_addresses(new.bcc, "bcc"),
        subject=_subject(new.subject),
        text=new.text,
        html=new.html,
        preview=body_preview(new.text, new.html),
        reply_all=bool(new.reply_all),
        references=[],
        created_at=now,
        updated_at=now,
        labels=[],
        attachments=[],
    )
    if new.in_reply_to or new.forward_of:
        caller.require("message_read")
    if new.in_reply_to:
        source = await source_message(session, caller, inbox, new.in_reply_to, "in_reply_to")
        draft.in_reply_to = source.message_id
        draft.thread_id = source.thread_id
        draft.references = thread_references(source.message_id, list(source.references or []))
        if not (new.to or new.cc or new.bcc):
            draft.to, draft.cc = reply_recipients(inbox, source, bool(new.reply_all))
        if new.subject is None:
            draft.subject = reply_subject(source.subject)
    elif new.forward_of:
        source = await source_message(session, caller, inbox, new.forward_of, "forward_of")
        draft.forward_of = source.message_id
        draft.thread_id = source.thread_id
        if new.subject is None:
            draft.subject = forward_subject(source.subject)
    _set_labels(draft, _labels(new.labels, "labels"))
    check_recipient_count(draft.to, draft.cc, draft.bcc)
    return draft


async def _by_client_id(session: AsyncSession, inbox: Inbox, client_id: str) -> Draft | None:
    return await session.scalar(select(Draft).where(Draft.inbox_id == inbox.id, Draft.client_id == client_id))


UNSET: Any = object()


@dataclass
class DraftChanges:
    """UpdateDraftRequest: UNSET = omitted (unchanged); None (or [] for lists) = clear."""

    reply_to: Any = UNSET
    to: Any = UNSET
    cc: Any = UNSET
    bcc: Any = UNSET
    subject: Any = UNSET
    text: Any = UNSET
    html: Any = UNSET
    add_attachments: list[StoredAttachment] | None = None
    remove_attachments: list[str] | None = None
    add_labels: list[str] | None = None
    remove_labels: list[str] | None = None
    send_at: Any = UNSET  # as sent (str or None): parsed once the draft is found (its 404 comes first)


def _new_send_at(draft: Draft, changes: DraftChanges) -> datetime | None:
    """The draft's ``send_at`` once ``changes`` apply; 400 for one that is not a datetime."""
    return draft.send_at if changes.send_at is UNSET else parse_send_at(changes.send_at)


def refuse_while_sending(draft: Draft) -> None:
    if draft.send_status == "sending":
        raise Conflict(
            "The draft is being sent and cannot be changed",
            fix="Wait until the send finishes (the draft then disappears) or fails.",
        )


async def check_update(
    session: AsyncSession, caller: Caller, inbox_id: str, draft_id: str, changes: DraftChanges, adding: int
) -> None:
    """Every refusal of ``update_draft`` that needs no attachment bytes (``adding`` attachments are
    to come), run before any URL is fetched; changes nothing (``session`` may be read-only)."""
    draft = await get_draft(session, caller, draft_id, inbox_id=inbox_id)
    refuse_while_sending(draft)
    _require_send_permission(caller, _new_send_at(draft, changes))
    addresses = {name: getattr(draft, name) for name in ("to", "cc", "bcc")}
    for name in ("reply_to", "to", "cc", "bcc"):
        value = getattr(changes, name)
        if value is not UNSET:
            addresses[name] = _addresses(value, name)
    if changes.subject is not UNSET:
        _subject(changes.subject)
    remove = set(_labels(changes.remove_labels, "remove_labels"))
    labels = [
        name for name in draft.label_names + _labels(changes.add_labels, "add_labels") if name not in remove
    ]
    gone = set(changes.remove_attachments or [])
    kept: list[Any] = [att for att in draft.attachments if att.id not in gone]
    _check_caps(
        addresses["to"], addresses["cc"], addresses["bcc"], kept + [None] * adding, labels, "add_attachments"
    )


async def update_draft(
    session: AsyncSession, rt: Runtime, caller: Caller, inbox_id: str, draft_id: str, changes: DraftChanges
) -> Draft:
    draft = await get_draft(session, caller, draft_id, inbox_id=inbox_id, for_update=True)
    refuse_while_sending(draft)
    # An edit to a draft that stays scheduled is sent as edited (new recipients, say): sending too.
    send_at = _new_send_at(draft, changes)
    _require_send_permission(caller, send_at)
    for name in ("reply_to", "to", "cc", "bcc"):
        value = getattr(changes, name)
        if value is not UNSET:
            setattr(draft, name, _addresses(value, name))
    if changes.subject is not UNSET:
        draft.subject = _subject(changes.subject)
    if changes.html is not UNSET:
        draft.html = changes.html
    if changes.text is not UNSET:
        draft.text = changes.text
    if changes.html is not UNSET or changes.text is not UNSET:
        draft.preview = body_preview(draft.text, draft.html)
    if changes.remove_attachments:
        gone = set(changes.remove_attachments)
        draft.attachments = [att for att in draft.attachments if att.id not in gone]
    _set_attachments(draft, changes.add_attachments or [])
    if changes.add_labels or changes.remove_labels:
        remove = set(_labels(changes.remove_labels, "remove_labels"))
        add = _labels(changes.add_labels, "add_labels")
        labels = [name for name in draft.label_names + add if name not in remove]
        _set_labels(draft, labels)
    _check_counts(draft, "add_attachments")
    if changes.send_at is not UNSET:
        _schedule(draft, send_at)
        await _sync_job(session, rt, draft)
    draft.updated_at = utcnow()
    await session.flush()
    return draft


async def delete_draft(session: AsyncSession, caller: Caller, inbox_id: str, draft_id: str) -> None:
    # Allowed even while "sending": the send re-checks the locked draft, so whichever commits
    # first wins and the other finds nothing (404 here, no message there).
    draft = await get_draft(session, caller, draft_id, inbox_id=inbox_id, for_update=True)
    await jobs.cancel(session, job_key(draft.id))
    await session.delete(draft)


async def _cleanup_inbox(session: AsyncSession, inbox: Inbox) -> None:
    """Deleting an inbox deletes its drafts and cancels their scheduled sends."""
    ids = list((await session.scalars(select(Draft.id).where(Draft.inbox_id == inbox.id))).all())
    if ids:
        await session.execute(delete(Job).where(Job.key.in_([job_key(i) for i in ids])))
        await session.execute(delete(Draft).where(Draft.id.in_(ids)))


inbox_cleanup.append(_cleanup_inbox)
