"""Checking a domain's published records with real DNS queries (dnspython).

The resolver is the system's, or ``settings.dns_resolver`` ("host[:port]") when set. Each record
gets MISSING / INVALID (with a reason) / VALID; the domain status follows from them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agentmx.domains.records import Record
from agentmx.host_port import split_host_port

if TYPE_CHECKING:
    import dns.asyncresolver

MISSING, INVALID, VALID = "MISSING", "INVALID", "VALID"


@dataclass(frozen=True)
class RecordCheck:
    record: Record
    status: str
    reason: str | None = None
    # False when DNS itself failed (timeout, SERVFAIL): the status says nothing about the record.
    answered: bool = True


def make_resolver(configured: str, timeout: float) -> dns.asyncresolver.Resolver:
    # dnspython is imported at the first lookup: 25-60 ms of every start, for a few requests and jobs.
    import dns.asyncresolver

    if configured:
        host, port = split_host_port(configured, 53)
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [host]
        resolver.port = port
    else:
        resolver = dns.asyncresolver.Resolver()
    resolver.lifetime = timeout
    resolver.timeout = min(timeout, 2.0)
    return resolver


async def lookup(resolver: dns.asyncresolver.Resolver, name: str, rdtype: str) -> list[str] | None:
    """Answer strings for (name, type); [] when the name has none; None when DNS could not answer."""
    import dns.exception
    import dns.rdatatype
    import dns.resolver

    try:
        answer = await resolver.resolve(name + ".", rdtype, search=False, raise_on_no_answer=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except (dns.exception.DNSException, OSError):  # timeout, SERVFAIL, a name DNS cannot hold…
        return None
    if answer.rrset is None:
        return []
    out: list[str] = []
    for rdata in answer.rrset:
        if rdata.rdtype == dns.rdatatype.TXT:
            out.append(b"".join(rdata.strings).decode(errors="replace"))
        elif rdata.rdtype == dns.rdatatype.MX:
            # A null MX (RFC 7505: "0 .") names no host: kept as ".", so every answer has two fields.
            out.append(f"{rdata.preference} {_host(rdata.exchange.to_text()) or '.'}")
        elif rdata.rdtype == dns.rdatatype.CNAME:
            out.append(_host(rdata.target.to_text()))
    return out


def _host(text: str) -> str:
    return text.rstrip(".").lower()


def _tags(value: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for part in value.split(";"):
        key, sep, val = part.partition("=")
        if sep:
            tags[key.strip().lower()] = "".join(val.split())
    return tags


def judge(record: Record, answers: list[str] | None) -> RecordCheck:
    """Compare what DNS returned with what the record requires."""
    if answers is None:
        return RecordCheck(record, MISSING, answered=False)
    if not answers:
        return RecordCheck(record, MISSING)
    if record.type == "MX":
        prefs = [(int(a.split()[0]), a.split()[1]) for a in answers]
        ours = [p for p, host in prefs if host == record.value]
        if not ours:
            return RecordCheck(record, INVALID, "value_mismatch")
        # Another exchanger at the same or a better preference would take some of the mail.
        if any(host != record.value and p <= min(ours) for p, host in prefs):
            return RecordCheck(record, INVALID, "duplicate_records")
        return RecordCheck(record, VALID)
    if record.type == "CNAME":
        if record.value in answers:
            return RecordCheck(record, VALID)
        return RecordCheck(record, INVALID, "value_mismatch")
    return _judge_txt(record, answers)


def _judge_txt(record: Record, answers: list[str]) -> RecordCheck:
    if record.purpose == "spf":
        relevant = [a for a in answers if a.lower().startswith("v=spf1")]
        if not relevant:
            return RecordCheck(record, MISSING)
        if len(relevant) > 1:  # RFC 7208: several SPF records are a permanent error
            return RecordCheck(record, INVALID, "duplicate_records")
        mechanism = _spf_term(record.value.split()[1])
        ok = mechanism in _spf_mechanisms(relevant[0])
        return RecordCheck(record, VALID if ok else INVALID, None if ok else "value_mismatch")
    if record.purpose == "dkim":
        want = _tags(record.value).get("p")
        keys = [_tags(a).get("p") for a in answers]
        if want not in keys:
            return RecordCheck(record, INVALID, "value_mismatch")
        if len(answers) > 1:
            return RecordCheck(record, INVALID, "duplicate_records")
        return RecordCheck(record, VALID)
    if record.purpose == "dmarc":
        relevant = [a for a in answers if a.replace(" ", "").lower().startswith("v=dmarc1")]
        if not relevant:
            return RecordCheck(record, INVALID, "value_mismatch")
        if len(relevant) > 1:
            return RecordCheck(record, INVALID, "duplicate_records")
        # Any enforceable policy will do; the owner may prefer quarantine or add report addresses.
        ok = _tags(relevant[0]).get("p", "").lower() in ("none", "quarantine", "reject")
        return RecordCheck(record, VALID if ok else INVALID, None if ok else "value_mismatch")
    ok = any(_norm(a) == _norm(record.value) for a in answers)
    return RecordCheck(record, VALID if ok else INVALID, None if ok else "value_mismatch")


def _spf_term(term: str) -> str:
    """An SPF term in one spelling: "+" is the default qualifier and a domain may end in a dot
    (RFC 7208 4.6.1, 7.1), so "+a:MX.example." is "a:mx.example"."""
    term = term.lower().removeprefix("+")
    return term.rstrip(".") if ":" in term else term


def _spf_mechanisms(value: str) -> list[str]:
    """The record's terms that take part, in one spelling: none after "all" is ever evaluated."""
    out = []
    for term in value.split()[1:]:
        term = _spf_term(term)
        if term.lstrip("-~?") == "all":
            break
        out.append(term)
    return out


def _norm(value: str) -> str:
    return " ".join(value.split()).lower()


async def check_records(records: list[Record], *, resolver_address: str, timeout: float) -> list[RecordCheck]:
    resolver = make_resolver(resolver_address, timeout)
    answers = await asyncio.gather(*(lookup(resolver, r.name, r.type) for r in records))
    return [judge(r, a) for r, a in zip(records, answers, strict=True)]


def domain_status(checks: list[RecordCheck]) -> tuple[str, str | None]:
    """(status, reason) for the domain from its record checks."""
    if any(c.status == INVALID for c in checks):
        return "INVALID", "dns_records_invalid"
    if any(c.status == MISSING for c in checks):
        return "PENDING", "dns_records_missing"
    return "VERIFIED", None


async def mx_hosts(name: str, *, resolver_address: str, timeout: float) -> list[str]:
    """The domain's current MX exchangers (empty when none or when DNS does not answer)."""
    resolver = make_resolver(resolver_address, timeout)
    answers = await lookup(resolver, name, "MX") or []
    return [a.split()[1] for a in answers]
