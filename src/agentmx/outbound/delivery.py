"""The ``deliver_outbound`` job: one outbound message to all its pending recipients.

Steps, each a function below: load the work, deliver to local inboxes (``mailstore.receive``),
DKIM-sign and deliver to remote hosts (relay or MX, a connection per domain, a transaction per
recipient: each has its own signed return path, ``return_path``; in test mode the outcomes are
simulated instead, ``capture``), give up on recipients
past ``outbound_max_lifetime``, record the outcomes in one transaction, and reschedule the job
on ``outbound_retry_schedule`` while any recipient is deferred. A crash between a remote 250 and
the record step re-sends on the next run: duplicates are tolerated, loss is not (RFC 5321 6.1).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from agentmx.db.models import Inbox, Message, OutboundRecipient
from agentmx.db.types import utcnow
from agentmx.host_port import split_host_port
from agentmx.jobs.registry import RetryAt, handler
from agentmx.mail.compose import address_domain, ascii_domain, wire_address
from agentmx.mail.sender_auth import Verdict
from agentmx.outbound import capture, dkim, dns, return_path, smtp_client
from agentmx.outbound.outcomes import Outcome, record
from agentmx.services import blob_bytes, mailstore
from agentmx.services.runtime import Runtime
from agentmx.services.sending import DELIVER_JOB
from agentmx.settings import parse_schedule

log = logging.getLogger("agentmx.outbound")

PENDING = ("queued", "deferred")
OWN_MAIL = Verdict(verified=True)


@dataclass
class Work:
    message_pk: str
    inbox_domain: str
    secret: bytes
    raw: bytes
    local: list[str]
    remote: list[str]

    def return_path(self, recipient: str | None = None) -> str:
        """``recipient``'s own return path; without one, the untagged return path of local deliveries."""
        return return_path.make(self.message_pk, self.inbox_domain, self.secret, recipient)


async def _is_local(session: AsyncSession, rt: Runtime, address: str) -> bool:
    """Addresses this server answers for: existing inboxes, and any address on a domain it serves."""
    if await session.get(Inbox, mailstore.envelope_recipient(rt, address)) is not None:
        return True
    domain = address_domain(address)
    domain = ascii_domain(domain) or domain  # inboxes on an IDN domain hold its A-labels
    if domain == rt.settings.domain.lower():
        return True
    return await session.scalar(select(Inbox.id).where(Inbox.domain == domain).limit(1)) is not None


async def load_work(rt: Runtime, message_pk: str) -> Work | None:
    async with rt.db.read() as session:
        message = await session.get(Message, message_pk)
        if message is None or message.blob_key is None:
            return None  # deleted since it was queued: nothing left to deliver
        inbox = await session.get(Inbox, message.inbox_id)
        if inbox is None:
            return None
        pending = list(
            await session.scalars(
                select(OutboundRecipient.address)
                .where(OutboundRecipient.message_pk == message_pk, OutboundRecipient.status.in_(PENDING))
                # The least tried first: one whose host keeps dropping the connection goes last.
                .order_by(OutboundRecipient.attempts, OutboundRecipient.address)
            )
        )
        local = [a for a in pending if await _is_local(session, rt, a)]
    raw = await blob_bytes.get(rt, message.blob_key)
    return Work(
        message_pk=message_pk,
        inbox_domain=inbox.domain,
        secret=rt.secret,
        raw=raw,
        local=local,
        remote=[a for a in pending if a not in local],
    )


async def deliver_local(rt: Runtime, work: Work) -> dict[str, Outcome]:
    if not work.local:
        return {}
    try:
        # Our own inbox sent it: as verified as mail gets, whatever its headers carry.
        results = await mailstore.receive(rt, work.raw, work.return_path(), work.local, sender=OWN_MAIL)
    except Exception as exc:  # storage trouble: keep custody and retry
        log.exception("local delivery of %s failed", work.message_pk)
        return {a: Outcome("deferred", 451, f"local delivery failed: {exc}") for a in work.local}
    out: dict[str, Outcome] = {}
    for address in work.local:
        # Results are keyed by the inbox address (lower case); recipients keep the case they were given.
        result = results.get(mailstore.envelope_recipient(rt, address))
        if result is not None and result.status in ("stored", "duplicate"):
            out[address] = Outcome("local", 250, "delivered to a local inbox")
        else:
            error = result.error if result is not None else None
            out[address] = Outcome("bounced", 550, f"5.1.1 {error or 'no such inbox'}")
    return out


def _outcome(reply: smtp_client.Reply) -> Outcome:
    text = f"{reply.code} {reply.text}"
    if reply.ok:
        return Outcome("delivered", reply.code, text)
    if reply.permanent:
        return Outcome("bounced", reply.code, text, suppress=reply.about_address)
    return Outcome("deferred", reply.code, text, attempted=reply.tried)


def _connections(rt: Runtime, targets: list[dns.Target]) -> list[smtp_client.Connection]:
    settings = rt.settings
    return [
        smtp_client.Connection(
            address=t.address, port=settings.outbound_port, server_name=t.host, helo=settings.hostname
        )
        for t in targets
    ]


def _relay(rt: Runtime) -> list[smtp_client.Connection]:
    settings = rt.settings
    host, port = split_host_port(settings.smtp_relay, 25)
    return [
        smtp_client.Connection(
            address=host,
            port=port,
            server_name=host,
            helo=settings.hostname,
            starttls="required" if settings.smtp_relay_starttls else "never",
            username=settings.smtp_relay_username,
            password=settings.smtp_relay_password,
            verify=settings.smtp_relay_tls_verify,
            ca_file=settings.smtp_relay_ca_file,
        )
    ]


async def _deliver_group(
    rt: Runtime, work: Work, raw: bytes, domain: str | None, rcpts: list[str]
) -> dict[str, Outcome]:
    if domain is None:
        connections = _relay(rt)
    else:
        try:
            # Looked up under the A-label RCPT TO names (wire_address), not dnspython's own IDNA.
            connections = _connections(rt, await dns.targets(rt.settings, ascii_domain(domain) or domain))
        except dns.DnsPermanent as exc:
            return {a: Outcome("bounced", 550, f"5.1.2 {exc}") for a in rcpts}
        except dns.DnsTemporary as exc:
            return {a: Outcome("deferred", 451, f"4.4.3 {exc}") for a in rcpts}
    last_error = "no mail host"
    wire = {rcpt: wire_address(rcpt) for rcpt in rcpts}  # an IDN domain goes as its A-labels
    outcomes: dict[str, Outcome] = {}
    pending = list(rcpts)
    for conn in connections:
        try:
            envelopes = [smtp_client.Envelope(work.return_path(rcpt), wire[rcpt]) for rcpt in pending]
            replies = await smtp_client.send(conn, envelopes, raw)
        except smtp_client.HostUnusable as exc:
            last_error = str(exc)
            continue
        for a in pending:
            outcomes[a] = _outcome(replies.get(wire[a], smtp_client.Reply(451, "no reply")))
        # A host's temporary answer (at MAIL, RCPT or DATA, or a lost connection) leaves the recipient
        # to the next host, as Postfix does (smtp_trouble.c): a greylisting or overloaded primary MX
        # while the backup takes mail. The last host that answered has the say.
        pending = [a for a in pending if outcomes[a].status == "deferred"]
        if not pending:
            break
    unanswered = [a for a in rcpts if a not in outcomes]
    if unanswered:
        # No host took the connection: a relay that is down or whose certificate does not hold is
        # the operator's to fix, so say why (MTAs log every deferral).
        log.warning("delivery to %s deferred: %s", "the relay" if domain is None else domain, last_error)
        outcomes.update({a: Outcome("deferred", None, f"4.4.1 {last_error}") for a in unanswered})
    return outcomes


async def _deliver_group_safely(
    rt: Runtime, work: Work, raw: bytes, domain: str | None, rcpts: list[str]
) -> dict[str, Outcome]:
    """``_deliver_group``; a failure nobody foresaw defers this group only. Raised out of the job, it
    lost the outcomes of the other groups, whose recipients were then sent the message again."""
    try:
        return await _deliver_group(rt, work, raw, domain, rcpts)
    except Exception as exc:
        log.exception("delivery to %s failed", "the relay" if domain is None else domain)
        return {a: Outcome("deferred", None, f"4.3.0 delivery failed: {exc!r}"[:500]) for a in rcpts}


async def deliver_remote(rt: Runtime, work: Work) -> dict[str, Outcome]:
    if not work.remote:
        return {}
    raw = await dkim.sign_for_domain(rt, work.inbox_domain, smtp_client.wire_form(work.raw))
    groups: dict[str | None, list[str]] = defaultdict(list)
    for address in work.remote:
        groups[None if rt.settings.smtp_relay else address_domain(address)].append(address)
    results = await asyncio.gather(
        *(_deliver_group_safely(rt, work, raw, domain, rcpts) for domain, rcpts in groups.items())
    )
    out: dict[str, Outcome] = {}
    for result in results:
        out.update(result)
    return out


def expire(outcomes: dict[str, Outcome], deadline: datetime, now: datetime) -> dict[str, Outcome]:
    """Deferred recipients past the message's lifetime bounce with their last reply. Such a bounce does
    not suppress the address: no host refused it (a relay outage would otherwise block every recipient
    it held, organization-wide)."""
    if now < deadline:
        return outcomes
    return {
        a: Outcome("bounced", o.code, f"gave up after retries: {o.text}", suppress=False)
        if o.status == "deferred"
        else o
        for a, o in outcomes.items()
    }


async def save(
    rt: Runtime, work: Work, outcomes: dict[str, Outcome], later: dict[str, Outcome] | None = None
) -> None:
    """Record ``outcomes``, then ``later`` (what follows them: a simulated complaint), in one transaction."""
    async with rt.db.transaction() as session:
        message = await session.get(Message, work.message_pk)
        if message is not None:
            await record(session, rt, message, outcomes)
            if later:
                await record(session, rt, message, later)


def _queued_at(payload: dict[str, Any]) -> datetime:
    try:
        value = datetime.fromisoformat(str(payload.get("queued_at", "")).replace("Z", "+00:00"))
    except ValueError:
        return utcnow()
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@handler(DELIVER_JOB)
async def deliver_outbound(rt: Runtime, payload: dict[str, Any], attempts: int) -> None:
    work = await load_work(rt, payload["message_pk"])
    if work is None:
        return
    outcomes = await deliver_local(rt, work)
    later: dict[str, Outcome] = {}
    if rt.settings.outbound_capture:
        captured, later = capture.outcomes(work.remote)
        outcomes.update(captured)
    else:
        outcomes.update(await deliver_remote(rt, work))
    now = utcnow()
    deadline = _queued_at(payload) + timedelta(seconds=rt.settings.outbound_max_lifetime)
    outcomes = expire(outcomes, deadline, now)
    await save(rt, work, outcomes, later)
    deferred = [a for a, o in outcomes.items() if o.status == "deferred"]
    if deferred:
        schedule = parse_schedule(rt.settings.outbound_retry_schedule) or [300.0]
        delay = schedule[min(attempts, len(schedule) - 1)]
        when = min(now + timedelta(seconds=delay), deadline)
        raise RetryAt(when, f"deferred: {', '.join(deferred)}")
