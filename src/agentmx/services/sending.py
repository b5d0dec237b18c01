"""Sending mail: the rules of send, reply, reply-all and forward, and the one transaction that records a send.

Interface (used by the HTTP routes and by drafts)::

    msg = await send_message(session, rt, caller, inbox, OutgoingMessage(...))

or, to keep rendering and blob fsyncs out of the write transaction (the HTTP routes do this)::

    async with rt.db.read() as s:
        prepared = await prepare_send(s, rt, caller, inbox, req)
    async with rt.db.transaction() as s:
        msg = await commit_send(s, rt, await get_inbox(s, caller, inbox_id), prepared)

SMTP submission (``smtp/submission.py``) sends a whole message the same way:
``prepare_submitted`` then ``commit_submitted``.

``session`` is the caller's write transaction: the stored message, its OutboundRecipient rows, the
``deliver_outbound`` job and the ``message.sent`` event all commit (or roll back) together.
``caller`` must already hold ``message_send``; ``inbox`` is the sending inbox (already scope-checked).
``reply_to_message`` / ``forward_of`` must be messages of that inbox. Errors:
400 ValidationFailed (bad address, > 50 recipients, bad header), 422 Unprocessable (no recipients),
403 MessageRejected (paused inbox, send-list or suppression hit), 429 RateLimited (the inbox's
send limit, ``send_limit``). A paused inbox refuses with 403
``message_rejected`` (the same class of refusal as a suspended account).
"""

from __future__ import annotations

import asyncio
import functools
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from agentmx.db.models import Inbox, Message, OutboundRecipient, Thread
from agentmx.db.types import utcnow
from agentmx.errors import MessageRejected, NotFound, Unprocessable, ValidationFailed
from agentmx.ids import new_message_id
from agentmx.mail import compose, submitted
from agentmx.mail.compose import OutAttachment
from agentmx.mail.parse import PARSE_IN_THREAD_BYTES, ParsedMessage, executor_for
from agentmx.services import blob_bytes, hooks, hop_limit, jobs, limits, lists, mailstore, send_limit
from agentmx.services.caller import Caller
from agentmx.services.events import record_event
from agentmx.services.runtime import Runtime
from agentmx.services.validation import one_line

MAX_RECIPIENTS = limits.MAX_RECIPIENTS
HEADER_NAME = re.compile(r"[!-9;-~]{1,76}")  # RFC 5322 ftext: printable ASCII except ":"
DELIVER_JOB = "deliver_outbound"


@dataclass
class OutgoingMessage:
    """A send request after the edge has parsed it (attachments already decoded / fetched)."""

    to: list[str] = field(default_factory=list)
    cc: list[str] = field(default_factory=list)
    bcc: list[str] = field(default_factory=list)
    reply_to: list[str] = field(default_factory=list)
    subject: str | None = None
    text: str | None = None
    html: str | None = None
    attachments: list[OutAttachment] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)
    # The wire field ``labels`` came from, as errors name it: a draft send's are its ``add_labels``.
    labels_field: str = "labels"
    reply_to_message: Message | None = None
    reply_all: bool = False
    forward_of: Message | None = None
    # A draft's: its recipients and subject were derived when it was made, and may have been
    # edited (cleared) since; they go as they are.
    as_given: bool = False


def iso(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _bad(path: str, message: str) -> ValidationFailed:
    return ValidationFailed(f"{path}: {message}", [{"path": [path], "message": message}])


def _addresses(values: list[str], path: str) -> list[str]:
    """Formatted single addresses; 400 when one is not a usable addr-spec."""
    for value in values:
        if not one_line(value):
            raise _bad(path, "address contains a line break")
    out = compose.split_addresses(values)
    for value in out:
        if not compose.valid_address(compose.bare_address(value)):
            raise _bad(path, f"'{value}' is not a valid email address")
    if len(out) < len([v for v in values if v.strip()]):
        raise _bad(path, "contains an invalid email address")
    return out


def _key(address: str) -> str:
    """An address as addresses are compared (duplicates, the inbox itself): lower case."""
    return compose.bare_address(address).lower()


def _envelope(address: str) -> str:
    """The bare address as it goes on the wire: a local part's case is its host's to interpret (RFC 5321
    2.4: a sender must keep it), only the domain is lower-cased."""
    local, _, domain = compose.bare_address(address).rpartition("@")
    return f"{local}@{domain.lower()}"


def _without(addresses: list[str], excluded: set[str]) -> list[str]:
    """Drop excluded, unusable (e.g. a garbled From of a replied-to message) and duplicate addresses."""
    out: list[str] = []
    seen = set(excluded)
    for address in addresses:
        key = _key(address)
        if key and key not in seen and compose.valid_address(key):
            seen.add(key)
            out.append(address)
    return out


def _distinct_recipients(addresses: list[str]) -> list[str]:
    recipients = _without(addresses, set())
    if len(recipients) > MAX_RECIPIENTS:
        raise _bad("to", f"at most {MAX_RECIPIENTS} recipients across to, cc and bcc")
    return recipients


def check_recipient_count(to: list[str], cc: list[str], bcc: list[str]) -> None:
    """400 past MAX_RECIPIENTS distinct addresses: for drafts, which would never send (a scheduled
    one would only fail at send_at)."""
    _distinct_recipients(compose.split_addresses(to + cc + bcc))


def reply_recipients(inbox: Inbox, original: Message, reply_all: bool) -> tuple[list[str], list[str]]:
    """(to, cc) of a reply that names none: the sender, or everyone for reply-all, never the inbox itself."""
    me = {inbox.id.lower()}
    if original.direction == "outbound":
        # Replying to our own sent message continues the conversation with its recipients.
        to = list(original.to)
        cc = list(original.cc) if reply_all else []
    else:
        to = list(original.reply_to) or [original.from_]
        cc = []
        if reply_all:
            to = to + list(original.to)
            cc = list(original.cc)
    to = _without(to, me)
    cc = _without(cc, me | {_key(a) for a in to})
    return to, cc


def _check_headers(subject: str | None, headers: dict[str, str]) -> None:
    """The header fields given: the rendering would refuse a line break too, but later (``_render``)."""
    if subject is not None and not one_line(subject):
        raise _bad("subject", "subject contains a line break")
    limits.check_count(headers, limits.MAX_HEADERS, "headers", "custom headers")
    for name, value in headers.items():
        if not HEADER_NAME.fullmatch(name):
            raise _bad("headers", f"'{name}' is not a valid header name")
        if not one_line(value):
            raise _bad("headers", f"the value of '{name}' contains a line break")


def _labels(labels: list[str], path: str) -> set[str]:
    limits.check_count(labels, limits.MAX_LABELS, path, "labels")
    out: set[str] = set()
    for label in labels:
        name = label.strip().lower()
        if not name or len(name) > 256:
            raise _bad(path, "labels must be 1-256 characters")
        if name in mailstore.SYSTEM_LABELS and name != "sent":
            raise _bad(path, f"'{name}' is a system label")
        out.add(name)
    return out


async def _original_attachments(rt: Runtime, session: AsyncSession, message: Message) -> list[OutAttachment]:
    out = []
    for att in message.attachments:
        out.append(
            OutAttachment(
                data=await blob_bytes.get(rt, att.blob_key, session),
                filename=att.filename,
                content_type=att.content_type,
                disposition=att.content_disposition,
                content_id=att.content_id,
            )
        )
    return out


async def _composition(
    rt: Runtime,
    session: AsyncSession,
    inbox: Inbox,
    req: OutgoingMessage,
    to: list[str],
    cc: list[str],
    reply_to: list[str],
) -> compose.Composition:
    subject, text, html = req.subject, req.text, req.html
    attachments = list(req.attachments)
    in_reply_to: str | None = None
    references: list[str] = []
    source = req.reply_to_message or req.forward_of
    if source is not None:
        in_reply_to = source.message_id
        references = compose.thread_references(source.message_id, list(source.references or []))
    if req.reply_to_message is not None:
        # The reply routes never pass a subject; a reply draft whose subject was edited does.
        subject = (
            req.subject
            if req.subject is not None or req.as_given
            else compose.reply_subject(req.reply_to_message.subject)
        )
    elif req.forward_of is not None:
        original = req.forward_of
        # An explicit subject is used as given; otherwise the original's, prefixed once.
        subject = (
            req.subject
            if req.subject is not None or req.as_given
            else compose.forward_subject(original.subject)
        )
        text, html = compose.forward_bodies(
            compose.ForwardSource(
                from_addr=original.from_,
                to=list(original.to),
                cc=list(original.cc),
                subject=original.subject,
                date=original.timestamp,
                text=original.text,
                html=original.html,
            ),
            text,
            html,
        )
        attachments += await _original_attachments(rt, session, original)
    now = utcnow()
    return compose.Composition(
        from_addr=compose.format_from(inbox.display_name, inbox.id),
        message_id=new_message_id(inbox.domain),
        date=now,
        to=to,
        cc=cc,
        reply_to=reply_to,
        subject=subject,
        text=text,
        html=html,
        attachments=attachments,
        headers=dict(req.headers),
        in_reply_to=in_reply_to,
        references=references,
    )


@dataclass
class PreparedSend:
    """A validated, rendered message whose blobs are already durable; only rows remain to be written."""

    raw: bytes
    parsed: ParsedMessage
    blobs: mailstore.StoredBlobs
    recipients: list[str]  # bare envelope recipients, local parts as written (``_envelope``)
    bcc: list[str]
    labels: set[str]
    thread_id: str | None


@dataclass
class CheckedSend:
    """A send request's addresses and labels once every rule has passed."""

    to: list[str]
    cc: list[str]
    bcc: list[str]
    reply_to: list[str]
    recipients: list[str]  # bare envelope recipients, local parts as written (``_envelope``)
    labels: set[str]


async def check_send(
    session: AsyncSession, rt: Runtime, caller: Caller, inbox: Inbox, req: OutgoingMessage
) -> CheckedSend:
    """Every rule of a send but the rendering of its header fields. ``session`` may be read-only.

    The send limit last: 429 says "well-formed, send it again later", so a request that could never
    be sent learns why first (400, 422, 403).
    """
    _check_active(inbox)
    to = _addresses(req.to, "to")
    cc = _addresses(req.cc, "cc")
    bcc = _addresses(req.bcc, "bcc")
    reply_to = _addresses(req.reply_to, "reply_to")
    original = req.reply_to_message
    if original is not None and not req.as_given:
        # A reply's to and cc, when given, override the derived ones field by field.
        derived_to, derived_cc = reply_recipients(inbox, original, req.reply_all)
        to, cc = (to if req.to else derived_to), (cc if req.cc else derived_cc)
    recipients = _distinct_recipients(to + cc + bcc)
    if not recipients:
        raise Unprocessable(
            "The message has no recipients", fix="Give at least one address in to, cc or bcc."
        )
    labels = _labels(req.labels, req.labels_field) | {"sent"}
    _check_headers(req.subject, req.headers)
    bare = [_envelope(a) for a in recipients]
    await _check_recipients(session, rt, inbox, bare)
    # Before the slow work (commit_send counts again, locked): a runaway agent's refused sends cost a
    # read, not a rendering, blob writes and URL attachment fetches each.
    await send_limit.check(session, rt.settings, inbox.id, lock=False)
    return CheckedSend(to=to, cc=cc, bcc=bcc, reply_to=reply_to, recipients=bare, labels=labels)


async def check_before_fetch(
    session: AsyncSession, rt: Runtime, caller: Caller, inbox: Inbox, req: OutgoingMessage
) -> None:
    """Every rule of a send that needs no attachment bytes: the routes run it before fetching a
    URL attachment, so a refused send causes no outbound HTTP. ``session`` may be read-only."""
    checked = await check_send(session, rt, caller, inbox, req)
    # The header fields as rendered (a value with a line break is refused here), without bodies or
    # attachments: rendering them is the slow part, and they are checked on their own.
    bare_req = replace(req, text=None, html=None, attachments=[], forward_of=None)
    if req.forward_of is not None and not req.as_given and req.subject is None:
        bare_req.subject = compose.forward_subject(req.forward_of.subject)
    _render(await _composition(rt, session, inbox, bare_req, checked.to, checked.cc, checked.reply_to))


def _render(comp: compose.Composition) -> bytes:
    try:
        return compose.to_bytes(compose.build(comp))
    except (ValueError, TypeError) as exc:
        raise _bad("headers", str(exc)) from exc


async def prepare_send(
    session: AsyncSession,
    rt: Runtime,
    caller: Caller,
    inbox: Inbox,
    req: OutgoingMessage,
    checked: CheckedSend | None = None,
) -> PreparedSend:
    """Every rule and all the slow work (rendering, blob fsyncs); ``session`` may be read-only.

    ``checked``: ``check_send``'s result for ``req`` in this transaction, when the caller ran it
    (before reading attachments); the rules do not depend on attachments."""
    checked = checked or await check_send(session, rt, caller, inbox, req)
    raw = _render(await _composition(rt, session, inbox, req, checked.to, checked.cc, checked.reply_to))
    parsed = await mailstore.parse(raw)
    source = req.reply_to_message or req.forward_of
    return PreparedSend(
        raw=raw,
        parsed=parsed,
        blobs=await mailstore.put_blobs(rt, raw, parsed),
        recipients=checked.recipients,
        bcc=checked.bcc,
        labels=checked.labels,
        thread_id=source.thread_id if source is not None else None,  # replies and forwards join it
    )


async def _check_recipients(session: AsyncSession, rt: Runtime, inbox: Inbox, bare: list[str]) -> None:
    """Send lists, then the organization's bounced and complained addresses (403 either way)."""
    await hooks.run_all(hooks.send_checks, session, rt, inbox, bare)
    suppressed = await lists.suppressed(session, inbox.organization_id, bare)
    if suppressed:
        raise MessageRejected(
            f"Recipient previously bounced or complained: {', '.join(sorted(suppressed))}",
            fix="Remove the suppressed recipients from the message.",
        )


async def prepare_submitted(
    session: AsyncSession, rt: Runtime, inbox: Inbox, raw: bytes, envelope_to: list[str], trace: bytes = b""
) -> PreparedSend:
    """A whole message from an SMTP submission client, sent as the API sends: the same rules.

    The envelope names the recipients (those not in To or Cc are its Bcc); the From field must
    be the inbox. A Bcc field is removed and a missing Message-ID or Date added (``mail.submitted``);
    ``trace`` (the Received field) goes on top.
    """
    read = functools.partial(_completed, raw, trace, new_message_id(inbox.domain), utcnow())
    # A 9 MB header of short fields took 9 s of CPU here: on the event loop, the API stalled that long.
    size = len(trace) + len(raw)
    if size > PARSE_IN_THREAD_BYTES:
        raw, from_fields, addresses = await asyncio.get_running_loop().run_in_executor(
            executor_for(size), read
        )
    else:
        raw, from_fields, addresses = read()
    hop_limit.check(rt.settings, raw)  # a mail loop before any other refusal, as inbound
    _check_active(inbox)
    bare = [_envelope(a) for a in _without(envelope_to, set())]
    if len(bare) > MAX_RECIPIENTS:
        raise _bad("to", f"at most {MAX_RECIPIENTS} recipients")
    if not bare:
        raise Unprocessable("The message has no recipients", fix="Give at least one RCPT TO.")
    parsed = await mailstore.parse(raw)
    if from_fields != 1 or not addresses or any(_key(a) != inbox.id.lower() for a in addresses):
        # One From field naming the inbox alone, and no Sender or Resent-* naming anybody else: a
        # second address would be shown to recipients as a sender too.
        raise MessageRejected(
            f"The From field must be the inbox address {inbox.id}, alone",
            fix=f"Send as {inbox.id}, the user name the session authenticated with, in one From field.",
        )
    await _check_recipients(session, rt, inbox, bare)
    await send_limit.check(session, rt.settings, inbox.id, lock=False)  # before the blob writes
    shown = {_key(a) for a in parsed.to + parsed.cc}
    return PreparedSend(
        raw=raw,
        parsed=parsed,
        blobs=await mailstore.put_blobs(rt, raw, parsed),
        recipients=bare,
        bcc=[a for a in bare if _key(a) not in shown],
        labels={"sent"},
        thread_id=None,  # In-Reply-To / References thread it, as inbound mail
    )


def _completed(raw: bytes, trace: bytes, message_id: str, now: datetime) -> tuple[bytes, int, list[str]]:
    """The message to send (``submitted.complete``, ``trace`` on top), its From fields and originators."""
    raw = trace + submitted.complete(raw, message_id, now)
    return (raw, *submitted.originators(raw))


def _check_active(inbox: Inbox) -> None:
    if inbox.status == "paused":
        raise MessageRejected("Inbox is paused", fix="Set the inbox status to active before sending from it.")


async def commit_send(session: AsyncSession, rt: Runtime, inbox: Inbox, prepared: PreparedSend) -> Message:
    """Write the message, its recipients, the delivery job and ``message.sent`` in ``session``."""
    _check_active(inbox)  # re-checked: prepare may have run in an earlier transaction
    await send_limit.check(session, rt.settings, inbox.id)
    thread_id = prepared.thread_id
    if thread_id is not None and await session.get(Thread, thread_id) is None:
        raise NotFound("Message not found", fix="The message was deleted while this send was prepared.")
    message = await mailstore.store_message(
        session,
        rt,
        inbox=inbox,
        raw=prepared.raw,
        direction="outbound",
        labels=prepared.labels,
        parsed=prepared.parsed,
        bcc=prepared.bcc,
        thread_id=thread_id,
        blobs=prepared.blobs,
    )
    for address in prepared.recipients:
        session.add(OutboundRecipient(message_pk=message.id, address=address, status="queued"))
    await jobs.enqueue(
        session,
        rt,
        DELIVER_JOB,
        {"message_pk": message.id, "queued_at": iso(utcnow())},
        key=f"deliver:{message.id}",
    )
    await record_event(
        session,
        rt,
        event_type="message.sent",
        organization_id=inbox.organization_id,
        pod_id=inbox.pod_id,
        inbox_id=inbox.id,
        payload={
            "send": {
                "inbox_id": inbox.id,
                "thread_id": message.thread_id,
                "message_id": message.message_id,
                "timestamp": iso(message.timestamp),
                "recipients": prepared.recipients,
            }
        },
    )
    return message


async def commit_submitted(
    session: AsyncSession, rt: Runtime, inbox: Inbox, prepared: PreparedSend
) -> Message:
    """``commit_send`` for ``prepare_submitted``; a client's retry of a message it sent (same
    Message-ID, its reply lost) returns the first, sent once."""
    # The id it is stored under: a Message-ID the parser cannot read gives one derived from the
    # content, which the lookup must find too (else the retry was queued again and sent twice).
    message_id = mailstore.message_id_for(prepared.parsed, prepared.raw, inbox)
    found = await session.scalar(
        select(Message).where(Message.inbox_id == inbox.id, Message.message_id == message_id)
    )
    if found is not None and found.direction == "outbound":
        return found
    if found is not None:
        raise _bad("Message-ID", f"{found.message_id} is a message this inbox received")
    return await commit_send(session, rt, inbox, prepared)


async def send_message(
    session: AsyncSession,
    rt: Runtime,
    caller: Caller,
    inbox: Inbox,
    req: OutgoingMessage,
    checked: CheckedSend | None = None,
) -> Message:
    """Validate, store and queue one outbound message in ``session``; returns the stored Message row."""
    prepared = await prepare_send(session, rt, caller, inbox, req, checked)
    return await commit_send(session, rt, inbox, prepared)
