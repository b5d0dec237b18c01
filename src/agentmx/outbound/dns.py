"""Where to deliver mail for a domain: MX hosts by preference, else the domain's own address (RFC 5321 5.1).

Uses ``settings.dns_resolver`` (host[:port]) when set, so tests can answer from a loopback DNS server.
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agentmx.host_port import split_host_port
from agentmx.settings import Settings

if TYPE_CHECKING:
    import dns.asyncresolver

LIFETIME = 10.0


def _temporary() -> tuple[type[Exception], ...]:
    """Lookups that may answer later (SERVFAIL is NoNameservers: every server failed)."""
    import dns.exception
    import dns.resolver

    return (dns.exception.Timeout, dns.resolver.NoNameservers, dns.resolver.YXDOMAIN)


class DnsPermanent(Exception):
    """The domain cannot receive mail (NXDOMAIN, null MX, no address for its hosts): bounce."""


class DnsTemporary(Exception):
    """DNS did not answer usefully right now: retry later."""


@dataclass(frozen=True)
class Target:
    host: str  # name for TLS / logs
    address: str  # IP to connect to


def resolver(settings: Settings) -> dns.asyncresolver.Resolver:
    # dnspython is imported at the first lookup: 25-60 ms of every start, for a few requests and jobs.
    import dns.asyncresolver
    import dns.resolver

    if settings.dns_resolver:
        res = dns.asyncresolver.Resolver(configure=False)
        host, port = split_host_port(settings.dns_resolver, 53)
        res.nameservers = [host]
        res.port = port
    else:
        try:
            res = dns.asyncresolver.Resolver()
        except dns.resolver.NoResolverConfiguration as exc:
            raise DnsTemporary("no DNS resolver configured") from exc
    res.lifetime = LIFETIME
    return res


def _ip_literal(value: str) -> str | None:
    try:
        return str(ipaddress.ip_address(value.strip("[]")))
    except ValueError:
        return None


async def _family(res: dns.asyncresolver.Resolver, host: str, rdtype: str) -> list[str]:
    import dns.resolver

    try:
        answer = await res.resolve(host, rdtype)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    return [str(r) for r in answer]


async def _addresses(res: dns.asyncresolver.Resolver, host: str) -> list[str]:
    """The host's IPv4 and IPv6 addresses. A lookup that fails (SERVFAIL, timeout) while the other family
    answered counts as no address of that family, as Postfix and Exim take it: a broken AAAA server is
    common and must not hold back mail that IPv4 can carry. Only when no address is known does the
    failure stand (raised: retry later)."""
    import dns.exception

    results = await asyncio.gather(*(_family(res, host, t) for t in ("A", "AAAA")), return_exceptions=True)
    out = [address for result in results if isinstance(result, list) for address in result]
    for failure in (r for r in results if isinstance(r, BaseException)):
        if not out or not isinstance(failure, dns.exception.DNSException):
            raise failure
    return out


async def targets(settings: Settings, domain: str) -> list[Target]:
    """Delivery targets for ``domain`` in preference order."""
    literal = _ip_literal(domain)
    if literal:
        return [Target(domain, literal)]
    res = resolver(settings)
    import dns.name
    import dns.resolver

    temporary = _temporary()
    try:
        try:
            answer = await res.resolve(domain, "MX")
            records = sorted(answer, key=lambda r: r.preference)
            hosts = [str(r.exchange).rstrip(".") for r in records]
            if hosts == [""]:
                raise DnsPermanent(f"{domain} accepts no mail (null MX)")
        except dns.resolver.NoAnswer:
            hosts = [domain]  # implicit MX: the domain itself
        out: list[Target] = []
        unresolved: Exception | None = None
        for host in hosts:
            if not host:
                continue
            literal = _ip_literal(host)
            try:
                addresses = [literal] if literal else await _addresses(res, host)
            except temporary as exc:
                # One host whose lookup failed leaves the others (Postfix skips it): retry only
                # when no host has an address.
                unresolved = exc
                continue
            out.extend(Target(host, address) for address in addresses)
        if not out and unresolved is not None:
            raise unresolved
    except dns.resolver.NXDOMAIN as exc:
        raise DnsPermanent(f"{domain} does not exist") from exc
    except (dns.name.EmptyLabel, dns.name.LabelTooLong, dns.name.NameTooLong, dns.name.IDNAException) as exc:
        raise DnsPermanent(f"{domain} is not a valid domain name: {exc}") from exc
    except temporary as exc:
        raise DnsTemporary(f"DNS lookup for {domain} failed: {exc}") from exc
    if not out:
        # Every answer was definite (a failed lookup raised above): no host has an address, so the
        # domain is no mail destination (RFC 5321 5.1: "MUST be reported as an error"), not one to
        # retry for days.
        raise DnsPermanent(f"no address for the mail hosts of {domain}")
    return out
