"""Webhook URL checks: refuse receivers on loopback, private, link-local or reserved addresses (SSRF)."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
from urllib.parse import urlsplit

from agentmx.daemon_pool import DaemonPool
from agentmx.errors import ValidationFailed
from agentmx.mail.idn import to_ascii_domain

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
LOOKUP_THREADS = 8  # webhook and attachment URL lookups at once; more wait for a thread


# getaddrinfo holds its thread until the system resolver answers or gives up (its own timeouts, maybe
# 30 s), even after the caller's deadline abandoned it. In the loop's default pool (a few threads)
# lookups stuck on a hung resolver queued blob writes and parses behind them: mail stopped being stored.
# Daemon threads: a stuck lookup held the process's exit after SIGTERM until the resolver gave up.
_lookups = DaemonPool(max_workers=LOOKUP_THREADS, thread_name_prefix="agentmx-lookup")


class BlockedAddress(Exception):
    """The URL's host resolves to an address webhooks may not reach."""


def _fail(message: str) -> ValidationFailed:
    return ValidationFailed(f"url: {message}", [{"path": ["url"], "message": message}])


def parse_url(url: str) -> tuple[str, int]:
    """Syntax check; returns (host, port). Only absolute http(s) URLs without credentials."""
    # Control characters would go into the request line as they are (non-ASCII is percent-encoded there).
    if not isinstance(url, str) or len(url) > 2048 or any(c.isspace() or not c.isprintable() for c in url):
        raise _fail("must be an absolute http or https URL")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise _fail("must be an absolute http or https URL") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _fail("must be an absolute http or https URL")
    if parts.username or parts.password:
        raise _fail("must not carry credentials")
    host = dns_host(parts.hostname)
    if host is None:
        raise _fail("must be an absolute http or https URL")
    return host, port or (443 if parts.scheme == "https" else 80)


def dns_host(host: str) -> str | None:
    """``host`` as DNS, TLS (SNI) and the Host header name it: Unicode labels as their IDNA 2008
    A-labels (the system resolver and ssl would apply IDNA 2003: "straße" is another domain there,
    and a Host header is ASCII). None if it has no such form."""
    return host if host.isascii() else to_ascii_domain(host)


def is_public(ip: IPAddress) -> bool:
    if isinstance(ip, ipaddress.IPv6Address):  # an IPv4 address inside (mapped, 6to4, Teredo) is what counts
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        ip = embedded or ip
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified)


async def resolve(host: str, port: int) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    lookup = functools.partial(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    infos = await asyncio.get_running_loop().run_in_executor(_lookups, lookup)
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


async def check_destination(url: str, allow_private: bool) -> IPAddress:
    """Before each request: raise BlockedAddress if any resolved address is not public (unless
    ``allow_private``).

    Returns the checked address to connect to (``pinned``), so a second DNS answer cannot point the
    request somewhere else (DNS rebinding).
    """
    host, port = parse_url(url)
    addresses = await resolve(host, port)
    if not addresses:
        raise BlockedAddress(f"{host} does not resolve")
    for ip in addresses if not allow_private else ():
        if not is_public(ip):
            raise BlockedAddress(f"{host} resolves to non-public address {ip}")
    return addresses[0]


def pinned(url: str, ip: IPAddress) -> tuple[str, dict[str, str], dict[str, str]]:
    """The URL rewritten to connect to ``ip``, plus the Host header and TLS server name to keep."""
    parts = urlsplit(url)
    host = dns_host(parts.hostname or "") or ""
    literal = f"[{ip}]" if isinstance(ip, ipaddress.IPv6Address) else str(ip)
    netloc = literal if parts.port is None else f"{literal}:{parts.port}"
    userinfo, at, host_header = parts.netloc.rpartition("@")
    if not host_header.isascii():
        host_header = host if parts.port is None else f"{host}:{parts.port}"
    netloc = userinfo + at + netloc  # credentials in the URL still go
    return parts._replace(netloc=netloc).geturl(), {"host": host_header}, {"sni_hostname": host}


async def check_url(url: str, allow_private: bool) -> None:
    """At create/update: 400 for bad syntax or a host that resolves to a non-public address.

    A host that does not resolve yet is accepted; delivery checks again every time.
    """
    try:
        await check_destination(url, allow_private)
    except BlockedAddress as exc:
        raise _fail(f"{exc}; webhook URLs must reach a public address") from exc
    except OSError:
        return
