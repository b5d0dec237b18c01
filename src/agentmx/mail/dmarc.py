"""DMARC (RFC 7489): is the From field's domain the one SPF or DKIM vouched for?

The identifier alignment test needs organizational domains, which come from the Public Suffix
List (``publicsuffixlist``, a copy bundled with the package: no download at run time).
"""

from __future__ import annotations

import asyncio
import functools
import re
from dataclasses import dataclass

from publicsuffixlist import PublicSuffixList

from agentmx.mail.auth_dns import AuthDns


@dataclass(frozen=True)
class Policy:
    """A published DMARC record's parts that the result depends on."""

    request: str  # p= (or sp= for a subdomain): none, quarantine or reject
    dkim_strict: bool  # adkim=s
    spf_strict: bool  # aspf=s


@functools.cache
def _suffixes() -> PublicSuffixList:
    return PublicSuffixList()


async def ready() -> None:
    """Load the list once, off the event loop: parsing it takes about half a second."""
    if not _suffixes.cache_info().currsize:
        await asyncio.to_thread(_suffixes)


def organizational_domain(domain: str) -> str:
    """``mail.example.co.uk`` -> ``example.co.uk`` (RFC 7489 3.2); a public suffix stays itself."""
    domain = domain.lower().rstrip(".")
    return _suffixes().privatesuffix(domain) or domain


def is_public_suffix(domain: str) -> bool:
    """``co.uk``, ``github.io``: a name under which unrelated parties register theirs."""
    return _suffixes().privatesuffix(domain.lower().rstrip(".")) is None


def aligned(identifier: str, from_domain: str, strict: bool) -> bool:
    identifier, from_domain = identifier.lower().rstrip("."), from_domain.lower().rstrip(".")
    if strict:
        return identifier == from_domain
    return organizational_domain(identifier) == organizational_domain(from_domain)


async def policy_for(from_domain: str, dns: AuthDns) -> Policy | None:
    """The policy for mail from ``from_domain`` (its own record, else its organizational domain's), or None.

    Raises ``DnsTempError`` when DNS did not answer.
    """
    found, record = await _record(f"_dmarc.{from_domain}", dns)
    subdomain = False
    if not found:  # only when the domain publishes no DMARC record at all (6.6.3)
        organization = organizational_domain(from_domain)
        if organization != from_domain.lower().rstrip("."):
            (_, record), subdomain = await _record(f"_dmarc.{organization}", dns), True
    if record is None:
        return None
    request = record.get("sp", record["p"]) if subdomain else record["p"]
    if request not in ("none", "quarantine", "reject"):
        request = record["p"]
    return Policy(request, record.get("adkim") == "s", record.get("aspf") == "s")


async def _record(name: str, dns: AuthDns) -> tuple[bool, dict[str, str] | None]:
    """(whether any DMARC record is there, its tags when it is one usable record)."""
    records = [r for r in await dns.txt(name) if re.match(r"^v\s*=\s*DMARC1\s*(;|$)", r)]
    if len(records) != 1:
        return bool(records), None  # none, or several: no policy, and several end the discovery (6.6.3)
    tags: dict[str, str] = {}
    for part in records[0].split(";"):
        name_, sep, value = part.partition("=")
        if sep:
            tags.setdefault(name_.strip().lower(), value.strip().lower())
    if tags.get("p") not in ("none", "quarantine", "reject"):
        return True, None  # p= is required; a record without a valid one is ignored (6.6.3)
    return True, tags
