"""DNS answers for checking a sender (SPF, DKIM keys, DMARC records): lists, with two kinds of failure.

An empty list is a name without such records (NXDOMAIN or no data: a "void lookup" in SPF's words);
``DnsTempError`` is a DNS that did not answer (time-out, SERVFAIL), which the checks report as
``temperror`` instead of guessing. Answers are cached per resolver address for their TTL.
"""

from __future__ import annotations

import functools
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.name
import dns.resolver

from agentmx.outbound.dns import split_host_port

LIFETIME = 4.0  # per query; the checks as a whole have their own deadline
CACHE_ENTRIES = 20_000


class DnsTempError(Exception):
    """The DNS did not answer usefully now; the same question may succeed later."""


class AuthDns:
    def __init__(self, resolver: dns.asyncresolver.Resolver) -> None:
        self.resolver = resolver

    async def txt(self, name: str) -> list[str]:
        """TXT records, each one's strings joined (RFC 7208 3.3)."""
        answer = await self._query(name, "TXT")
        return [b"".join(rdata.strings).decode("utf-8", "replace") for rdata in answer]

    async def addresses(self, name: str, ipv6: bool = False) -> list[str]:
        return [rdata.address for rdata in await self._query(name, "AAAA" if ipv6 else "A")]

    async def mx(self, name: str) -> list[str]:
        """Exchange names by preference; a null MX ("." , RFC 7505) names none."""
        records = sorted(await self._query(name, "MX"), key=lambda rdata: rdata.preference)
        hosts = (rdata.exchange.to_text(omit_final_dot=True) for rdata in records)
        return [host for host in hosts if host and host != "."]

    async def _query(self, name: str, rdtype: str) -> list[Any]:
        try:
            answer = await self.resolver.resolve(name, rdtype, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except (
            dns.exception.Timeout,
            dns.resolver.NoNameservers,
            dns.resolver.NoResolverConfiguration,
        ) as exc:
            raise DnsTempError(f"{rdtype} {name}: {exc.__class__.__name__}") from exc
        except dns.exception.DNSException as exc:  # a name DNS cannot carry (label too long, ...)
            if isinstance(exc, (dns.name.LabelTooLong, dns.name.NameTooLong, dns.name.EmptyLabel)):
                return []
            raise DnsTempError(f"{rdtype} {name}: {exc.__class__.__name__}") from exc
        return list(answer)


@functools.lru_cache(maxsize=8)
def for_resolver(address: str) -> AuthDns:
    """One cached resolver per configured address ("" = the system's /etc/resolv.conf)."""
    if address:
        resolver = dns.asyncresolver.Resolver(configure=False)
        host, port = split_host_port(address)
        resolver.nameservers = [host]
        resolver.port = port
    else:
        try:
            resolver = dns.asyncresolver.Resolver()
        except dns.resolver.NoResolverConfiguration:
            resolver = dns.asyncresolver.Resolver(configure=False)  # every query: DnsTempError
    resolver.lifetime = LIFETIME
    resolver.cache = dns.resolver.LRUCache(CACHE_ENTRIES)
    return AuthDns(resolver)
