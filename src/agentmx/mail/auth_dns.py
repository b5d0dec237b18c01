"""DNS answers for checking a sender (SPF, DKIM keys, DMARC records): lists, with two kinds of failure.

An empty list is a name without such records (NXDOMAIN or no data: a "void lookup" in SPF's words);
``DnsTempError`` is a DNS that did not answer (time-out, SERVFAIL), which the checks report as
``temperror`` instead of guessing. Answers are cached per resolver address for their TTL (at
most an hour; a name without records for a minute).
"""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING, Any

from agentmx.host_port import split_host_port

if TYPE_CHECKING:
    import dns.asyncresolver

LIFETIME = 4.0  # per query; the checks as a whole have their own deadline
CACHE_ENTRIES = 20_000
NEGATIVE_TTL = 60.0  # seconds a name without records is remembered
MAX_TTL = 3600.0


class DnsTempError(Exception):
    """The DNS did not answer usefully now; the same question may succeed later."""


class AuthDns:
    def __init__(self, resolver: dns.asyncresolver.Resolver) -> None:
        self.resolver = resolver
        # (name, type) -> (monotonic expiry, records): a hit skips dnspython, whose cached answer
        # still cost a quarter of a millisecond of CPU (most mail comes from a few domains).
        self._answers: dict[tuple[str, str], tuple[float, list[Any]]] = {}

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
        key = (name.lower(), rdtype)
        cached = self._answers.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        ttl, records = await self._resolve(name, rdtype)
        if len(self._answers) >= CACHE_ENTRIES:
            self._answers.clear()
        self._answers[key] = (time.monotonic() + ttl, records)
        return records

    async def _resolve(self, name: str, rdtype: str) -> tuple[float, list[Any]]:
        """(seconds to keep the answer, its records)."""
        import dns.exception
        import dns.name
        import dns.resolver

        try:
            # Labels taken as they are: a name from a sender's record or mail is not zone-file text,
            # so a backslash in it is not an escape (RFC 7208 4.8).
            qname = dns.name.Name([label.encode() for label in name.rstrip(".").split(".")] + [b""])
            answer = await self.resolver.resolve(qname, rdtype, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return NEGATIVE_TTL, []
        except (
            dns.exception.Timeout,
            dns.resolver.NoNameservers,
            dns.resolver.NoResolverConfiguration,
        ) as exc:
            raise DnsTempError(f"{rdtype} {name}: {exc.__class__.__name__}") from exc
        except dns.exception.DNSException as exc:  # a name DNS cannot carry (label too long, ...)
            if isinstance(exc, (dns.name.LabelTooLong, dns.name.NameTooLong, dns.name.EmptyLabel)):
                return NEGATIVE_TTL, []
            raise DnsTempError(f"{rdtype} {name}: {exc.__class__.__name__}") from exc
        return min(answer.rrset.ttl if answer.rrset is not None else 0, MAX_TTL), list(answer)


@functools.lru_cache(maxsize=8)
def for_resolver(address: str) -> AuthDns:
    """One cached resolver per configured address ("" = the system's /etc/resolv.conf)."""
    # dnspython is imported at the first lookup: 25-60 ms of every start, for a few requests and jobs.
    import dns.asyncresolver
    import dns.resolver

    if address:
        resolver = dns.asyncresolver.Resolver(configure=False)
        host, port = split_host_port(address, 53)
        resolver.nameservers = [host]
        resolver.port = port
    else:
        try:
            resolver = dns.asyncresolver.Resolver()
        except dns.resolver.NoResolverConfiguration:
            resolver = dns.asyncresolver.Resolver(configure=False)  # every query: DnsTempError
    resolver.lifetime = LIFETIME
    return AuthDns(resolver)
