"""DNS blocklists (RFC 5782): is the SMTP client's address listed as a source of spam?

A zone such as ``zen.spamhaus.org`` answers an A query for the reversed address under it
(``2.0.0.127.zen.spamhaus.org``) with a 127.0.0.x code when it is listed. Codes in 127.255.255.0/24
are the list's own errors (Spamhaus: queries through public resolvers are refused), not listings.
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass

from agentmx.mail.auth_dns import AuthDns, DnsTempError

_LISTED = ipaddress.ip_network("127.0.0.0/8")
_LIST_ERRORS = ipaddress.ip_network("127.255.255.0/24")


@dataclass(frozen=True)
class Listing:
    zone: str
    code: str  # the 127.0.0.x answer, which says why (each list documents its codes)


def query_name(ip: str, zone: str) -> str:
    address = ipaddress.ip_address(ip)
    if address.version == 4:
        return ".".join(reversed(str(address).split("."))) + "." + zone
    return ".".join(reversed(address.exploded.replace(":", ""))) + "." + zone


async def listings(ip: str, zones: list[str], dns: AuthDns) -> list[Listing]:
    """The zones that list ``ip``; a zone that does not answer lists nothing."""
    answers = await asyncio.gather(*(_codes(dns, query_name(ip, zone)) for zone in zones))
    return [Listing(zone, codes[0]) for zone, codes in zip(zones, answers, strict=True) if codes]


async def _codes(dns: AuthDns, name: str) -> list[str]:
    try:
        addresses = await dns.addresses(name)
    except DnsTempError:
        return []
    return [a for a in addresses if _is_listing(a)]


def _is_listing(address: str) -> bool:
    try:
        value = ipaddress.ip_address(address)
    except ValueError:
        return False
    return value in _LISTED and value not in _LIST_ERRORS
