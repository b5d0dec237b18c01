"""Reports that come back to our return paths (``bounces+<message pk>-<tag>@domain``, see ``return_path``).

- Delivery status notifications (RFC 3464, or RFC 6533's global form, in RFC 6522 multipart/report): a failure of the
  recipient the return path was made for is recorded as its bounce (label, ``message.bounced``
  event, suppression, unless its status is 4.x.x). A failure of an address it expanded to (an alias's
  member, a forward: Original-Recipient names the recipient, or is absent) bounces it without
  suppressing it: its mail did not arrive, but the address itself was accepted and may deliver to
  its other members. ``delayed`` and ``delivered`` change nothing.
- Feedback reports (ARF, RFC 5965): a complaint of that recipient (``message.complained``, suppression),
  unless its type is not one (``not-spam``, ``auth-failure``).

A report speaks only for the recipient its return path was made for: anybody may write one, and a
recipient who saw a message could otherwise block its co-recipients. A report that cannot be matched
is dropped (logged): it must not be stored in an inbox nor bounced back.
"""

from __future__ import annotations

import asyncio
import binascii
import logging
import quopri
from collections.abc import Callable
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import Message as EmailPart

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from agentmx.db.models import Message, OutboundRecipient
from agentmx.mail import compose
from agentmx.mail.parse import PARSE_IN_THREAD_BYTES
from agentmx.outbound import return_path
from agentmx.outbound.outcomes import Outcome, record
from agentmx.services.runtime import Runtime

log = logging.getLogger("agentmx.outbound")


@dataclass(frozen=True)
class RecipientStatus:
    address: str  # Final-Recipient (else Original-Recipient)
    action: str  # failed | delayed | delivered | relayed | expanded
    status: str  # X.Y.Z
    diagnostic: str = ""
    original: str = ""  # Original-Recipient: the address as we gave it, before an alias expanded it


def _field_address(value: str) -> str:
    """``rfc822; user@example.com`` -> ``user@example.com``."""
    _, _, address = value.partition(";")
    return (address or value).strip().strip("<>").lower()


# RFC 3464's report, and RFC 6533's for mail sent with SMTPUTF8 (Postfix's, for one).
STATUS_TYPES = ("message/delivery-status", "message/global-delivery-status")


def _status_blocks(part: EmailPart) -> list[EmailPart]:
    payload = part.get_payload()
    encoding = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    if isinstance(payload, list) and part.get_content_type() == STATUS_TYPES[0] and encoding not in _DECODERS:
        return [p for p in payload if isinstance(p, EmailPart)]
    # Some parsers leave the body as text, the global form's blocks are read as one message, and it
    # may be encoded (RFC 6533 3): split the decoded header blocks ourselves.
    text = (
        payload if isinstance(payload, str) else part.as_string().replace("\r\n", "\n").partition("\n\n")[2]
    )
    if encoding in _DECODERS:
        text = _DECODERS[encoding](text.encode("ascii", "replace")).decode("utf-8", "replace")
    blocks = [b for b in text.replace("\r\n", "\n").split("\n\n") if b.strip()]
    return [message_from_bytes(b.encode("utf-8", "replace") + b"\n\n") for b in blocks]


def _base64(body: bytes) -> bytes:
    try:
        return binascii.a2b_base64(body)
    except binascii.Error:  # a malformed report: no blocks
        return b""


_DECODERS: dict[str, Callable[[bytes], bytes]] = {"base64": _base64, "quoted-printable": quopri.decodestring}


def parse_report(raw: bytes) -> list[RecipientStatus]:
    """Per-recipient statuses of a DSN; empty when ``raw`` is not one."""
    msg = message_from_bytes(raw, policy=policy.compat32)
    out: list[RecipientStatus] = []
    for part in msg.walk():
        if part.get_content_type() not in STATUS_TYPES:
            continue
        for block in _status_blocks(part)[1:]:  # the first block is per-message
            original = block.get("Original-Recipient")
            recipient = block.get("Final-Recipient") or original
            if not recipient:
                continue
            out.append(
                RecipientStatus(
                    address=_field_address(str(recipient)),
                    action=str(block.get("Action", "")).strip().lower(),
                    status=str(block.get("Status", "")).strip(),
                    diagnostic=" ".join(str(block.get("Diagnostic-Code", "")).split()),
                    original=_field_address(str(original)) if original else "",
                )
            )
    return out


@dataclass(frozen=True)
class Feedback:
    feedback_type: str
    recipients: list[str]  # Original-Rcpt-To, as the report says (not believed: see the module's text)


def parse_feedback(raw: bytes) -> Feedback | None:
    """The ARF feedback report in ``raw``, or None when it is not one."""
    msg = message_from_bytes(raw, policy=policy.compat32)
    for part in msg.walk():
        if part.get_content_type() != "message/feedback-report":
            continue
        fields: list[EmailPart] = _status_blocks(part) or [part]
        block = fields[0]
        rcpts = [_field_address(str(v)) for v in block.get_all("Original-Rcpt-To") or []]
        kind = str(block.get("Feedback-Type", "abuse")).strip().lower() or "abuse"
        return Feedback(kind, [r for r in rcpts if r])
    return None


def claims(address: str) -> bool:
    return return_path.parse(address) is not None


async def _reported_recipient(session: AsyncSession, rt: Runtime, rcpt: str) -> tuple[Message, str] | None:
    """The message and the one recipient a report to the return path ``rcpt`` may speak for."""
    path = return_path.parse(rcpt)
    message = await session.get(Message, path.message_pk) if path is not None else None
    if path is None or message is None:
        log.info("report to %s: no such message", rcpt)
        return None
    remote = await session.scalars(
        select(OutboundRecipient.address).where(
            OutboundRecipient.message_pk == message.id, OutboundRecipient.status != "local"
        )
    )
    address = return_path.recipient(rt.secret, path, remote)
    if address is None:
        log.info("report to %s ignored: the return path names none of the message's recipients", rcpt)
        return None
    return message, address


def _wire(address: str) -> str:
    """An address in the form the remote host saw: an IDN domain as its ASCII form (``xn--…``)."""
    return compose.wire_address(address).lower() if address else ""


def _failed(status: RecipientStatus) -> bool:
    return status.action == "failed" or status.status.startswith("5")


def _bounce(statuses: list[RecipientStatus], address: str) -> Outcome | None:
    """The bounce a DSN reports for ``address``, if it reports one: its own failure, else the failure
    of an address it expanded to. The report reached its return path, so it is about mail to it."""
    wire = _wire(address)
    failures = [s for s in statuses if _failed(s)]
    own = next((s for s in failures if _wire(s.address) == wire), None)
    if own is not None:
        # A 4.x.x failure (RFC 3463: a persistent transient one) is a host giving up on a temporary
        # condition, a full mailbox or an unreachable server: bounced, not suppressed, as our own expiry.
        text = f"{own.status} {own.diagnostic}".strip()
        return Outcome("bounced", None, text, attempted=False, suppress=not own.status.startswith("4"))
    member = next((s for s in failures if _wire(s.original) in ("", wire)), None)
    if member is None:
        return None
    # Only the member is known undeliverable: suppressing the alias would refuse mail its other
    # members still take (and a member cannot be suppressed on the word of the alias's host).
    text = f"{member.status} {member.address}: {member.diagnostic}".strip(": ")
    return Outcome("bounced", None, text, attempted=False, suppress=False)


# Feedback types (RFC 5965, 6591, 6650) that say the recipient objects to the mail. not-spam says the
# opposite, auth-failure is about the sender's SPF/DKIM: neither is a complaint.
COMPLAINT_TYPES = ("abuse", "fraud", "virus", "other")


def _complaint(feedback: Feedback) -> Outcome:
    return Outcome(
        "complained",
        None,
        f"feedback report: {feedback.feedback_type}",
        attempted=False,
        feedback_type=feedback.feedback_type,
    )


def _read(raw: bytes) -> tuple[Feedback | None, list[RecipientStatus]]:
    """The feedback report in ``raw``, else its delivery statuses; neither when it cannot be read."""
    try:
        feedback = parse_feedback(raw)
        return feedback, parse_report(raw) if feedback is None else []
    except Exception:  # noqa: BLE001 (hostile MIME, e.g. parts nested past the recursion limit)
        log.info("a report that could not be read was dropped")
        return None, []


async def handle_dsn(rt: Runtime, raw: bytes, rcpt: str) -> None:
    """Record the bounce or complaint a report to the return path ``rcpt`` makes for its recipient."""
    # A large report is read in a thread, as inbound mail is (mail.parse): the event loop keeps serving.
    large = len(raw) > PARSE_IN_THREAD_BYTES
    feedback, statuses = await asyncio.to_thread(_read, raw) if large else _read(raw)
    async with rt.db.transaction() as session:
        found = await _reported_recipient(session, rt, rcpt)
        if found is None:
            return
        message, address = found
        if feedback is not None and feedback.feedback_type not in COMPLAINT_TYPES:
            log.info("ignored a %s feedback report to %s", feedback.feedback_type, rcpt)
            return
        outcome = _complaint(feedback) if feedback is not None else _bounce(statuses, address)
        if outcome is None:
            log.info("ignored a report to %s (%d statuses, no failure)", rcpt, len(statuses))
            return
        await record(session, rt, message, {address: outcome})
