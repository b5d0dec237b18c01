"""Reports that come back to our return paths (``bounces+<message pk>@domain``).

- Delivery status notifications (RFC 3464 inside RFC 6522 multipart/report): failed recipients of
  that message are recorded as bounces (label, ``message.bounced`` event, suppression); ``delayed``
  and ``delivered`` reports change nothing.
- Feedback reports (ARF, RFC 5965): the complaining recipients (``Original-Rcpt-To``, else every
  recipient the message reached) are recorded as complaints (``message.complained``, suppression).

A report that cannot be matched is dropped (logged): it must not be stored in an inbox nor bounced back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import Message as EmailPart

from sqlalchemy import select

from agentmx.db.models import Message, OutboundRecipient
from agentmx.outbound import return_path
from agentmx.outbound.outcomes import Outcome, record
from agentmx.services.runtime import Runtime

log = logging.getLogger("agentmx.outbound")


@dataclass(frozen=True)
class RecipientStatus:
    address: str
    action: str  # failed | delayed | delivered | relayed | expanded
    status: str  # X.Y.Z
    diagnostic: str = ""


def _field_address(value: str) -> str:
    """``rfc822; user@example.com`` -> ``user@example.com``."""
    _, _, address = value.partition(";")
    return (address or value).strip().strip("<>").lower()


def _status_blocks(part: EmailPart) -> list[EmailPart]:
    payload = part.get_payload()
    if isinstance(payload, list):
        return [p for p in payload if isinstance(p, EmailPart)]
    # Some parsers leave the body as text: split the header blocks ourselves.
    text = payload if isinstance(payload, str) else ""
    blocks = [b for b in text.replace("\r\n", "\n").split("\n\n") if b.strip()]
    return [message_from_bytes(b.encode("utf-8", "replace") + b"\n\n") for b in blocks]


def parse_report(raw: bytes) -> list[RecipientStatus]:
    """Per-recipient statuses of a DSN; empty when ``raw`` is not one."""
    msg = message_from_bytes(raw, policy=policy.compat32)
    out: list[RecipientStatus] = []
    for part in msg.walk():
        if part.get_content_type() != "message/delivery-status":
            continue
        for block in _status_blocks(part)[1:]:  # the first block is per-message
            recipient = block.get("Final-Recipient") or block.get("Original-Recipient")
            if not recipient:
                continue
            out.append(
                RecipientStatus(
                    address=_field_address(str(recipient)),
                    action=str(block.get("Action", "")).strip().lower(),
                    status=str(block.get("Status", "")).strip(),
                    diagnostic=" ".join(str(block.get("Diagnostic-Code", "")).split()),
                )
            )
    return out


@dataclass(frozen=True)
class Feedback:
    feedback_type: str
    recipients: list[str]


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
    return return_path.message_pk(address) is not None


async def handle_dsn(rt: Runtime, raw: bytes, rcpt: str) -> None:
    """Record the bounces or complaint a report names for the message named by ``rcpt``."""
    pk = return_path.message_pk(rcpt)
    if pk is None:
        return
    feedback = parse_feedback(raw)
    if feedback is not None:
        await _record_complaint(rt, pk, feedback)
        return
    statuses = parse_report(raw)
    failed = {
        s.address: Outcome("bounced", None, f"{s.status} {s.diagnostic}".strip(), attempted=False)
        for s in statuses
        if s.action == "failed" or s.status.startswith("5")
    }
    if not failed:
        log.info("ignored a report to %s (%d statuses)", rcpt, len(statuses))
        return
    async with rt.db.transaction() as session:
        message = await session.get(Message, pk)
        if message is None:
            log.info("DSN for unknown message %s", pk)
            return
        await record(session, rt, message, failed)


async def _record_complaint(rt: Runtime, pk: str, feedback: Feedback) -> None:
    async with rt.db.transaction() as session:
        message = await session.get(Message, pk)
        if message is None:
            log.info("feedback report for unknown message %s", pk)
            return
        recipients = feedback.recipients
        if not recipients:
            recipients = list(
                await session.scalars(
                    select(OutboundRecipient.address).where(
                        OutboundRecipient.message_pk == pk, OutboundRecipient.status == "delivered"
                    )
                )
            )
        outcome = Outcome(
            "complained",
            None,
            f"feedback report: {feedback.feedback_type}",
            attempted=False,
            feedback_type=feedback.feedback_type,
        )
        await record(session, rt, message, {address: outcome for address in recipients})
