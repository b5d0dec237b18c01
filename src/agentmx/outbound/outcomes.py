"""Recording delivery outcomes: recipient rows, system labels, delivery/bounce events, suppression.

Shared by the delivery job (SMTP replies) and DSN intake (bounces reported later by a remote MTA).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from agentmx.db.models import Message, OutboundRecipient
from agentmx.db.types import utcnow
from agentmx.services import hooks, messages
from agentmx.services.events import record_event
from agentmx.services.runtime import Runtime

DELIVERED = ("delivered", "local")
FINAL = ("bounced", "expired", "complained")  # later reports never undo these
# The row status of a bounce that does not suppress (Outcome.suppress): reported as a bounce, but
# services/sending's suppression check reads "bounced" and "complained" rows only.
EXPIRED = "expired"


@dataclass(frozen=True)
class Outcome:
    status: str  # delivered | local | deferred | bounced | complained
    code: int | None = None
    text: str = ""
    attempted: bool = True  # False for outcomes learnt later (DSNs, complaints)
    feedback_type: str = "abuse"  # complaints: the ARF Feedback-Type
    # A bounce suppresses the address, unless no host ever refused it (the message's lifetime ran
    # out while its hosts, or the relay, were unreachable or answered 4xx).
    suppress: bool = True


def iso(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def add_label(session: AsyncSession, message: Message, label: str) -> bool:
    """True when the message did not have it yet."""
    return await messages.apply_labels(session, message, {label}, set())


def _ids(message: Message, now: datetime) -> dict[str, str]:
    return {
        "inbox_id": message.inbox_id,
        "thread_id": message.thread_id,
        "message_id": message.message_id,
        "timestamp": iso(now),
    }


async def record(session: AsyncSession, rt: Runtime, message: Message, outcomes: dict[str, Outcome]) -> None:
    """Apply ``outcomes`` (address -> Outcome) to the message's recipient rows, in the caller's transaction.

    Only changes are reported: a recipient already delivered/bounced is not announced twice.
    """
    # The message is locked before its recipients, the order a deletion takes them in (the message,
    # then the cascade), and re-read: a report recorded meanwhile may have added the labels this adds.
    # Its thread before it (messages.lock_threads_of): an outcome label changes the thread's labels,
    # so it moves the thread's updated_at as any label change does; the other order could deadlock.
    await messages.lock_threads_of(session, Message.id == message.id)
    if await session.scalar(messages.locked(select(Message).where(Message.id == message.id))) is None:
        return  # deleted meanwhile
    rows = {
        row.address: row
        for row in await session.scalars(
            # Locked (PostgreSQL): a delivery's outcome and a report arriving at the same time would
            # each see the old status, and both announce their change.
            select(OutboundRecipient)
            .where(OutboundRecipient.message_pk == message.id)
            .order_by(OutboundRecipient.address)
            .with_for_update()
        )
    }
    now = utcnow()
    delivered: list[str] = []
    bounced: list[str] = []
    complained: list[str] = []
    delayed = False
    for address, outcome in outcomes.items():
        row = rows.get(address)
        if row is None or row.status in FINAL:
            continue
        status = EXPIRED if outcome.status == "bounced" and not outcome.suppress else outcome.status
        changed = row.status != status
        row.status = status
        if outcome.attempted:
            row.attempts = (row.attempts or 0) + 1
        row.last_code = outcome.code
        row.last_response = outcome.text[:2000]
        row.updated_at = now
        if not changed:
            continue
        if outcome.status in DELIVERED:
            delivered.append(address)
        elif outcome.status == "bounced":
            bounced.append(address)
        elif outcome.status == "complained":
            complained.append(address)
        elif outcome.status == "deferred":
            delayed = True
    scope = {
        "organization_id": message.organization_id,
        "pod_id": message.pod_id,
        "inbox_id": message.inbox_id,
    }
    labelled = False
    if delayed:  # a temporary failure: the label stays as a record that delivery was slow
        labelled |= await add_label(session, message, "delayed")
    if delivered:
        labelled |= await add_label(session, message, "delivered")
        await record_event(
            session,
            rt,
            event_type="message.delivered",
            payload={"delivery": {**_ids(message, now), "recipients": delivered}},
            **scope,
        )
    if bounced:
        labelled |= await add_label(session, message, "bounced")
        # As SES types them: a Permanent bounce suppresses its addresses, a Transient one (the
        # message's lifetime ran out on 4xx answers, a host gave up with a 4.x.x status) does not.
        for bounce_type in ("Permanent", "Transient"):
            these = [a for a in bounced if outcomes[a].suppress == (bounce_type == "Permanent")]
            if not these:
                continue
            await record_event(
                session,
                rt,
                event_type="message.bounced",
                payload={
                    "bounce": {
                        **_ids(message, now),
                        "type": bounce_type,
                        "sub_type": "General",
                        "recipients": [{"address": a, "status": "bounced"} for a in these],
                    }
                },
                **scope,
            )
        for address in (a for a in bounced if outcomes[a].suppress):  # list entries (services/lists)
            await hooks.run_all(
                hooks.suppression_recorders,
                session,
                rt,
                message.organization_id,
                message.pod_id,
                message.inbox_id,
                address,
                "bounced",
            )
    if complained:
        feedback = next(o.feedback_type for a, o in outcomes.items() if a in complained)
        labelled |= await add_label(session, message, "complained")
        await record_event(
            session,
            rt,
            event_type="message.complained",
            payload={
                "complaint": {
                    **_ids(message, now),
                    "type": feedback,
                    "sub_type": "spam" if feedback == "abuse" else feedback,
                    "recipients": complained,
                }
            },
            **scope,
        )
        for address in complained:
            await hooks.run_all(
                hooks.suppression_recorders,
                session,
                rt,
                message.organization_id,
                message.pod_id,
                message.inbox_id,
                address,
                "complained",
            )
    if labelled:
        await messages.touch_threads(session, [message.thread_id])
