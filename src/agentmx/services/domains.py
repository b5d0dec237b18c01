"""Custom domains: registration, DNS verification, and the rules inboxes on them follow.

A domain belongs to one pod or (no pod) to every pod of its organization. Its status comes from
real DNS checks (agentmx.domains.dns_check), run on POST …/verify and then periodically by the
``check_domain`` job. Inboxes may live on a verified domain, or on any subdomain of a verified
domain with ``subdomains_enabled``; deleting the domain stops them sending and receiving.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from agentmx.db.models import Domain, Inbox
from agentmx.db.types import utcnow
from agentmx.db.unique import flush_unless_taken
from agentmx.domains import dns_check, keys, wire
from agentmx.domains.records import MAX_NAME, dkim_name
from agentmx.domains.records import zone_file as render_zone
from agentmx.errors import AlreadyTaken, Forbidden, MessageRejected, NotFound, Unprocessable
from agentmx.ids import new_id
from agentmx.mail import dmarc
from agentmx.services import jobs
from agentmx.services.caller import Caller
from agentmx.services.events import record_event
from agentmx.services.pagination import Page, paginate
from agentmx.services.pods import get_pod
from agentmx.services.runtime import Runtime
from agentmx.services.validation import check_client_id, check_domain_name, fail, to_ascii_domain

UNSET: Any = object()
CHECK_JOB = "check_domain"
FLAGS = ("feedback_enabled", "inbound_enabled", "subdomains_enabled", "tracking_enabled")
# Longer names leave no room for the DKIM record's name (<selector>._domainkey.<domain>) in DNS:
# such a domain could never publish it, nor verify.
MAX_DOMAIN_LENGTH = MAX_NAME - len(dkim_name(keys.new_selector(), ""))
# Providers whose MX on a domain means another mailbox service already receives its mail.
CONFLICTING_MX = {"google.com": "Google Workspace", "googlemail.com": "Google Workspace"}


def job_key(domain_id: str) -> str:
    return f"{CHECK_JOB}:{domain_id}"


def _visible(stmt: Any, caller: Caller) -> Any:
    stmt = stmt.where(Domain.organization_id == caller.organization_id)
    if caller.pod_id:
        stmt = stmt.where(or_(Domain.pod_id == caller.pod_id, Domain.pod_id.is_(None)))
    return stmt


def _scope(caller: Caller) -> None:
    if caller.inbox_id:
        raise Forbidden("Forbidden", fix="Inbox-scoped API keys cannot manage domains.")


async def get_domain(
    session: AsyncSession, caller: Caller, domain_id: str, pod_id: str | None = None
) -> Domain:
    """By id, or by domain name (the historical id)."""
    _scope(caller)
    if pod_id is not None:
        await get_pod(session, caller, pod_id)
    key = domain_id.strip()
    row = await session.get(Domain, key)
    if row is None:
        name = to_ascii_domain(key) or key.lower().rstrip(".")  # "bücher.example" finds its A-label
        row = await session.scalar(select(Domain).where(Domain.name == name))
    if (
        row is None
        or row.organization_id != caller.organization_id
        or (caller.pod_id and row.pod_id not in (None, caller.pod_id))
        or (pod_id is not None and row.pod_id != pod_id)
    ):
        raise NotFound("Domain not found")
    return row


async def _writable(session: AsyncSession, caller: Caller, domain_id: str, pod_id: str | None) -> Domain:
    row = await get_domain(session, caller, domain_id, pod_id)
    if caller.pod_id and row.pod_id is None:
        raise Forbidden(
            "Forbidden", fix="This domain is shared by all pods; change it with an organization key."
        )
    return row


async def _locked(session: AsyncSession, row: Domain) -> Domain:
    """The domain re-read under FOR UPDATE; 404 when a concurrent delete removed it meanwhile (a
    refresh of the vanished row raised instead: a 500)."""
    locked = await session.get(Domain, row.id, with_for_update=True, populate_existing=True)
    if locked is None:
        raise NotFound("Domain not found")
    return locked


async def conflicting_provider(rt: Runtime, name: str) -> str | None:
    """The mail provider already named by the domain's MX records, if it is one we must not displace."""
    settings = rt.settings
    hosts = await dns_check.mx_hosts(
        name, resolver_address=settings.dns_resolver, timeout=settings.dns_timeout
    )
    for host in hosts:
        for suffix, provider in CONFLICTING_MX.items():
            if host == suffix or host.endswith("." + suffix):
                return provider
    return None


async def load_name_rules() -> None:
    """Before create_domain's transaction: the Public Suffix List takes half a second to load, once."""
    await dmarc.ready()


async def create_domain(
    session: AsyncSession,
    rt: Runtime,
    caller: Caller,
    *,
    pod_id: str | None,
    name: str,
    feedback_enabled: bool | None,
    inbound_enabled: bool | None,
    subdomains_enabled: bool | None,
    tracking_enabled: bool | None,
    client_id: str | None,
    conflicting: str | None = None,
) -> Domain:
    """``conflicting`` = result of ``conflicting_provider`` (DNS is queried outside the transaction)."""
    _scope(caller)
    check_client_id(client_id)
    if client_id and (existing := await _by_client_id(session, caller, client_id)):
        return existing
    if pod_id is None:
        pod_id = caller.pod_id
    if pod_id is not None:
        # Pinned: a concurrent delete_pod waits and then counts this domain (409), or went first
        # and this is a 404 (not a foreign key error).
        await get_pod(session, caller, pod_id, lock="pin")
    domain_name = check_domain_name(name)
    if len(domain_name) > MAX_DOMAIN_LENGTH:
        raise fail("domain", f"'{domain_name}' is too long: at most {MAX_DOMAIN_LENGTH} characters")
    if dmarc.is_public_suffix(domain_name):
        # No one owns co.uk or github.io: registered, it would block every name under it for others.
        raise fail("domain", f"'{domain_name}' is a public suffix: register a domain under it")
    default = rt.settings.domain
    if domain_name == default or domain_name.endswith("." + default):
        raise Unprocessable(
            f"'{domain_name}' is this server's default domain", fix="Register a domain you own."
        )
    inbound = True if inbound_enabled is None else inbound_enabled
    if conflicting and inbound:
        raise Unprocessable(
            f"Domain '{domain_name}' already receives mail with {conflicting}",
            fix="Pass allow_conflicting_provider=true, or create the domain with inbound_enabled=false.",
        )
    if await session.scalar(select(Domain.id).where(Domain.name == domain_name)) is not None:
        raise AlreadyTaken(f"Domain '{domain_name}' is already registered", fix="Use another domain.")
    await _check_no_foreign_claim(session, caller.organization_id, pod_id, domain_name)
    key = keys.generate()
    now = utcnow()
    row = Domain(
        id=new_id("dom"),
        organization_id=caller.organization_id,
        pod_id=pod_id,
        name=domain_name,
        client_id=client_id,
        feedback_enabled=True if feedback_enabled is None else feedback_enabled,
        inbound_enabled=inbound,
        subdomains_enabled=bool(subdomains_enabled),
        tracking_enabled=bool(tracking_enabled),
        status="NOT_STARTED",
        reason=None,
        checks=[],
        dkim_selector=key.selector,
        dkim_public_key=key.public_key,
        dkim_private_key=keys.encrypt(rt.secret, key.private_pem),
        created_at=now,
        updated_at=now,
    )
    if not await flush_unless_taken(session, row):
        # A request with the same client_id got there first (a retry), or the name was taken.
        existing = await _by_client_id(session, caller, client_id) if client_id else None
        if existing is None:
            raise AlreadyTaken(f"Domain '{domain_name}' is already registered")
        return existing
    return row


async def _check_no_foreign_claim(
    session: AsyncSession, organization_id: str, pod_id: str | None, name: str
) -> None:
    """A domain governs the addresses at and under its name (governing_domain): refuse one inside a
    domain of another pod, or over inboxes a pod could not keep. A pod key registering
    sales.<another pod's domain> cut that pod's inboxes there off from sending and receiving."""
    for parent in await session.scalars(select(Domain).where(Domain.name.in_(_parents(name)))):
        if parent.organization_id != organization_id or (pod_id and parent.pod_id not in (None, pod_id)):
            raise AlreadyTaken(f"'{name}' is inside '{parent.name}', registered by another pod")
    under = or_(Inbox.domain == name, Inbox.domain.like("%." + name))  # names hold no % or _
    inboxes = select(Inbox.organization_id, Inbox.pod_id).where(under)
    for owner, inbox_pod in await session.execute(inboxes):
        if owner != organization_id or (pod_id and inbox_pod != pod_id):
            raise AlreadyTaken(f"Inboxes of another pod have addresses at '{name}'")


async def _by_client_id(session: AsyncSession, caller: Caller, client_id: str) -> Domain | None:
    """The domain an earlier create with this client_id made. One outside the caller's scope is refused,
    not returned: a pod key naming another pod's client_id was handed that pod's domain."""
    row = await session.scalar(
        select(Domain).where(Domain.organization_id == caller.organization_id, Domain.client_id == client_id)
    )
    if row is not None and caller.pod_id and row.pod_id not in (None, caller.pod_id):
        raise AlreadyTaken(f"client_id '{client_id}' is already in use", fix="Use another client_id.")
    return row


async def list_domains(
    session: AsyncSession,
    caller: Caller,
    *,
    pod_id: str | None,
    limit: int,
    page_token: str | None,
    ascending: bool,
) -> Page[Domain]:
    _scope(caller)
    stmt = _visible(select(Domain), caller)
    if pod_id is not None:
        await get_pod(session, caller, pod_id)
        stmt = stmt.where(Domain.pod_id == pod_id)
    return await paginate(
        session,
        stmt,
        kind="domains",
        columns=[Domain.created_at, Domain.id],
        limit=limit,
        page_token=page_token,
        ascending=ascending,
    )


async def update_domain(
    session: AsyncSession,
    rt: Runtime,
    caller: Caller,
    domain_id: str,
    *,
    pod_id: str | None = None,
    flags: dict[str, bool],
) -> Domain:
    if not flags:
        raise fail("body", "Provide at least one of " + ", ".join(FLAGS))
    row = await _locked(session, await _writable(session, caller, domain_id, pod_id))  # one change at a time
    for name, value in flags.items():
        if name not in FLAGS:
            raise fail(name, f"unknown field {name}")
        setattr(row, name, value)
    row.updated_at = utcnow()
    if row.status != "NOT_STARTED":
        # New records (wildcard MX, tracking CNAME…) start MISSING; check them soon.
        await _settle(session, rt, row)
        await _schedule(session, rt, row.id, delay=0)
    await session.flush()
    return row


async def delete_domain(
    session: AsyncSession, caller: Caller, domain_id: str, pod_id: str | None = None
) -> None:
    """Inboxes on the domain stay (with their mail) but stop sending and receiving."""
    row = await _locked(session, await _writable(session, caller, domain_id, pod_id))  # no verify meanwhile
    await jobs.cancel(session, job_key(row.id))
    await session.delete(row)


async def zone_file(
    session: AsyncSession, rt: Runtime, caller: Caller, domain_id: str, pod_id: str | None
) -> str:
    row = await get_domain(session, caller, domain_id, pod_id)
    return render_zone(row.name, wire.records(row, rt.settings))


# Verification ---------------------------------------------------------------------------------------


async def _schedule(session: AsyncSession, rt: Runtime, domain_id: str, *, delay: float) -> None:
    await jobs.cancel(session, job_key(domain_id))
    await jobs.enqueue(
        session,
        rt,
        CHECK_JOB,
        {"domain_id": domain_id},
        run_at=utcnow() + timedelta(seconds=delay),
        key=job_key(domain_id),
    )


async def _settle(session: AsyncSession, rt: Runtime, row: Domain) -> None:
    """Derive the domain status from its records; announce the first moment it becomes VERIFIED."""
    states = wire.record_states(row, rt.settings)
    checks = [dns_check.RecordCheck(r, status, reason) for r, status, reason in states]
    status, reason = dns_check.domain_status(checks)
    became_verified = status == "VERIFIED" and row.status != "VERIFIED"
    if (status, reason) != (row.status, row.reason):
        row.status, row.reason = status, reason
        row.updated_at = utcnow()
    if became_verified:
        row.verified_at = row.verified_at or utcnow()
        await session.flush()
        await record_event(
            session,
            rt,
            event_type="domain.verified",
            organization_id=row.organization_id,
            pod_id=row.pod_id,
            inbox_id=None,
            payload={"domain": wire.domain(row, rt.settings)},
        )


async def check_now(rt: Runtime, domain_id: str) -> Domain | None:
    """Query DNS for every record (outside any transaction), then store the outcome."""
    async with rt.db.read() as s:
        row = await s.get(Domain, domain_id)
        if row is None:
            return None
        wanted = wire.records(row, rt.settings)
        # The database's clock on PostgreSQL: checks run in several processes, maybe on several hosts,
        # and their start times are compared below. SQLite serves one process.
        started: datetime = utcnow() if rt.db.is_sqlite else (await s.scalar(select(func.now()))) or utcnow()
    settings = rt.settings
    results = await dns_check.check_records(
        wanted, resolver_address=settings.dns_resolver, timeout=settings.dns_timeout
    )
    async with rt.db.transaction() as s:
        # Locked, so a verify racing the periodic job cannot announce domain.verified twice.
        row = await s.get(Domain, domain_id, with_for_update=True)
        if row is None:
            return None
        if row.checked_at is not None and row.checked_at > started:
            return row  # a check that began after this one has stored newer answers
        # A resolver failure keeps the record's last known state, so a DNS hiccup never un-verifies.
        previous = {c["key"]: c for c in row.checks or []}
        checks = []
        for c in results:
            if not c.answered and c.record.key in previous:
                checks.append(previous[c.record.key])
            else:
                checks.append({"key": c.record.key, "status": c.status, "reason": c.reason})
        row.checks = checks
        row.checked_at = started  # what DNS said as of then
        await _settle(s, rt, row)
        return row


async def verify_domain(rt: Runtime, caller: Caller, domain_id: str, pod_id: str | None = None) -> None:
    """POST …/verify: check right away (so the answer is visible at once) and keep re-checking."""
    async with rt.db.read() as s:
        # A check changes the domain (status, records, its check job, domain.verified): a pod key may
        # read a shared domain but not verify it, as it may not update or delete it.
        row = await _writable(s, caller, domain_id, pod_id)
        real_id = row.id
    await check_now(rt, real_id)
    async with rt.db.transaction() as s:
        # Locked: two verifies at once each deleted the old check job and the second's insert of the
        # new one broke the job key's uniqueness (a 500).
        if await s.get(Domain, real_id, with_for_update=True) is not None:
            await _schedule(s, rt, real_id, delay=rt.settings.domain_check_interval)


def next_check_delay(rt: Runtime, status: str) -> float:
    interval = rt.settings.domain_check_interval
    # Verified domains are re-checked rarely, to notice records that were later removed.
    return interval * 36 if status == "VERIFIED" else interval


async def domain_count(session: AsyncSession, organization_id: str) -> int:
    count = await session.scalar(
        select(func.count()).select_from(Domain).where(Domain.organization_id == organization_id)
    )
    return int(count or 0)


# Rules for inboxes on custom domains (registered as hooks by agentmx.domains.feature) ----------------


def _parents(name: str) -> list[str]:
    labels = name.split(".")
    return [".".join(labels[i:]) for i in range(1, len(labels) - 1)]


async def governing_domain(session: AsyncSession, address_domain: str) -> Domain | None:
    """The registered domain an address domain belongs to: itself, or a parent with subdomains enabled."""
    name = address_domain.lower().rstrip(".")
    rows = (await session.scalars(select(Domain).where(Domain.name.in_([name, *_parents(name)])))).all()
    by_name = {r.name: r for r in rows}
    if name in by_name:
        return by_name[name]
    for parent in _parents(name):
        row = by_name.get(parent)
        if row is not None:
            return row if row.subdomains_enabled else None
    return None


def _usable_by(row: Domain, organization_id: str, pod_id: str) -> bool:
    return row.organization_id == organization_id and row.pod_id in (None, pod_id)


async def check_inbox_domain(
    session: AsyncSession, rt: Runtime, caller: Caller, pod_id: str, domain: str
) -> None:
    """inboxes.custom_domain_check: a new inbox's domain must be verified and usable by its pod."""
    name = domain.lower().rstrip(".")
    rows = (await session.scalars(select(Domain).where(Domain.name.in_([name, *_parents(name)])))).all()
    registered = {r.name: r for r in rows}
    # The nearest registered name governs the address, as it governs its mail (governing_domain): one
    # this pod may not use is refused even when a farther one could be (another pod's subdomain of a
    # shared domain was open to inboxes that took its addresses and could never receive).
    nearest = next((n for n in (name, *_parents(name)) if n in registered), None)
    row = registered[nearest] if nearest else None
    if row is None or not _usable_by(row, caller.organization_id, pod_id):
        raise Unprocessable(
            f"Domain '{name}' is not a verified domain of this organization",
            code="domain_not_verified",
            fix=f"Use the default domain '{rt.settings.domain}' or add and verify the domain first.",
        )
    if nearest == name:
        if row.verified_at is None:
            raise Unprocessable(
                f"Domain '{name}' is not verified yet",
                code="domain_not_verified",
                fix="Publish the domain's DNS records and call POST /v0/domains/{domain_id}/verify.",
            )
        return
    if not row.subdomains_enabled:
        raise Unprocessable(
            f"'{name}' is a subdomain of '{nearest}', which does not have subdomains_enabled",
            fix=f"Enable subdomains_enabled on '{nearest}' (and publish its wildcard MX record).",
        )
    if row.status != "VERIFIED":
        raise Unprocessable(
            f"Domain '{nearest}' is not verified (status {row.status})",
            code="domain_not_verified",
            fix="Publish the domain's DNS records (including the wildcard MX) and verify it.",
        )


async def _inbox_domain(session: AsyncSession, inbox: Inbox) -> Domain | None:
    """The registered domain an inbox on a custom domain depends on; None once it is gone."""
    row = await governing_domain(session, inbox.domain)
    if row is None or not _usable_by(row, inbox.organization_id, inbox.pod_id):
        return None
    return row


async def recipient_check(session: AsyncSession, rt: Runtime, inbox: Inbox) -> None:
    """hooks.recipient_checks: inboxes on a deleted (or send-only) domain receive nothing."""
    if inbox.domain == rt.settings.domain:
        return
    row = await _inbox_domain(session, inbox)
    if row is None or not row.inbound_enabled:
        raise NotFound(f"Mailbox {inbox.id} does not accept mail")


async def send_check(session: AsyncSession, rt: Runtime, inbox: Inbox, recipients: list[str]) -> None:
    """hooks.send_checks: inboxes on a deleted domain cannot send, nor on one registered again until
    that registration is verified (its new DKIM key is not published yet: the mail went unsigned)."""
    if inbox.domain == rt.settings.domain:
        return
    row = await _inbox_domain(session, inbox)
    if row is None:
        raise MessageRejected(
            f"The domain of {inbox.id} is no longer registered",
            fix="Re-add and verify the domain, or send from another inbox.",
        )
    if row.verified_at is None:
        raise MessageRejected(
            f"The domain of {inbox.id} is not verified",
            fix=f"Publish the records of '{row.name}' and call POST /v0/domains/{row.id}/verify.",
        )


async def dkim_lookup(session: AsyncSession, rt: Runtime, domain: str) -> tuple[str, bytes] | None:
    """hooks.dkim_lookups: (selector, private key PEM) for a registered domain that has been verified.

    Keys are per registered name: signers that sign for a subdomain inbox should ask for each
    parent in turn and sign with d= the name that answered.
    """
    row = await session.scalar(select(Domain).where(Domain.name == domain.lower().rstrip(".")))
    if row is None or row.verified_at is None:
        return None
    return row.dkim_selector, keys.decrypt(rt.secret, row.dkim_private_key)
