"""Who sent this mail? SPF, DKIM and DMARC of a message received over SMTP, as one
Authentication-Results field (RFC 8601) and one verdict: is the From domain authenticated?

An agent reads the From field and may act on it; anybody can write any From. The verdict is
DMARC's test (RFC 7489 4.2): an SPF or DKIM pass for a domain aligned with the From domain,
computed whether or not that domain publishes a DMARC record.

Mail from trusted networks (this host, a relay in front) is not checked, as an MTA does not
check its own submissions.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from agentmx.mail import dkim_verify, dmarc, dnsbl, header_fields, spf
from agentmx.mail.auth_dns import AuthDns, DnsTempError, for_resolver
from agentmx.mail.dkim_verify import DkimResult
from agentmx.mail.idn import to_ascii_domain
from agentmx.smtp.front_settings import SmtpSettings

log = logging.getLogger("agentmx.mail")

DEADLINE = 10.0  # seconds for each check (they run side by side); what has not answered is a temperror
_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+\-./=?^_`{|}~@]+")
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")
_BARE_LINE_END = re.compile(rb"\r(?!\n)|(?<!\r)\n")
_AR_FIELD = re.compile(rb"(?:\A|(?<=[\r\n]))authentication-results[ \t]*:", re.IGNORECASE)
_COMMENT = re.compile(r"\((?:[^()\\]|\\.)*\)")
_MAX_COMMENT_DEPTH = 8
_STRICTNESS = ("none", "quarantine", "reject")
MAX_FROM_DOMAINS = 5  # a From naming more is judged on its first five


@dataclass(frozen=True)
class SenderAuth:
    """The results of the three checks, and whether they authenticate the From domain."""

    spf: str  # spf.RESULTS
    spf_identity: tuple[str, str]  # ("smtp.mailfrom", address) or ("smtp.helo", name) for a null sender
    dkim: list[DkimResult] = field(default_factory=list)
    dmarc: str = "none"  # pass, fail, none (no record, no From), temperror: of the From domains, the worst
    from_domain: str | None = None
    requested: str | None = None  # the domain's p= (or sp=)
    from_verified: bool = False  # an SPF or DKIM pass aligned with the From domain

    def header(self, authserv_id: str) -> bytes:
        """The Authentication-Results field, folded, ending in CRLF."""
        parts = [f"spf={self.spf} {self.spf_identity[0]}={_value(self.spf_identity[1])}"]
        for result in self.dkim or ():
            parts.append(
                f"dkim={result.result} header.d={_value(result.domain or 'unknown')} "
                f"header.s={_value(result.selector or 'unknown')} header.b={_value(result.signature or 'none')}"
            )
        if not self.dkim:
            parts.append("dkim=none")
        requested = f" (p={self.requested})" if self.requested else ""
        from_part = f" header.from={_value(self.from_domain)}" if self.from_domain else ""
        parts.append(f"dmarc={self.dmarc}{requested}{from_part}")
        results = ";\r\n\t".join(parts)
        return f"Authentication-Results: {_value(authserv_id)};\r\n\t{results}\r\n".encode()


def _value(text: str) -> str:
    """A property value: a token as it is, anything else a quoted string (RFC 8601 2.2)."""
    text = _UNPRINTABLE.sub("?", text)[:255]  # never a different name: "cödé" is not "cd"
    if _TOKEN.fullmatch(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def client_ip(peer: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The SMTP client's address from an aiosmtpd peer (a tuple, or a list after the front-end link)."""
    host = _peer_host(peer)
    return None if host is None else _ip_of(host)


def _peer_host(peer: Any) -> str | None:
    return str(peer[0]) if isinstance(peer, (tuple, list)) and peer else None


def _ip_of(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def checked(settings: SmtpSettings, peer: Any) -> str | None:
    """The client IP to check mail from, or None (checks off, a trusted network, no IP)."""
    host = _peer_host(peer) if settings.inbound_sender_checks else None
    return None if host is None else _untrusted(host, settings.trusted_networks)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=4096)  # asked for every message: parsing and matching cost more than the lookup
def _untrusted(host: str, trusted: tuple[Network, ...]) -> str | None:
    """``host`` as the IP to check, or None when it is in a trusted network or is no IP."""
    address = _ip_of(host)
    if address is None or any(address in network for network in trusted):
        return None
    return str(address)


@dataclass(frozen=True)
class Verdict:
    """What storing a checked message needs to know of its checks."""

    verified: bool  # the From domain is authenticated (SenderAuth.from_verified)
    # DMARC failed and the domain asks for quarantine or reject (AGENTMX_INBOUND_DMARC_POLICY), or the
    # client's address is on a blocklist of AGENTMX_INBOUND_DNSBL.
    spam: bool = False


@dataclass(frozen=True)
class Checked:
    """A received message after the checks: what to store, the field to add above it, the verdict."""

    raw: bytes  # claims of our authserv-id renamed
    field: bytes = b""  # Authentication-Results (and X-Agentmx-Dnsbl), or empty when not checked
    verdict: Verdict | None = None  # None when not checked
    refused: bool = False  # DMARC failed, the domain asks for reject, and AGENTMX_INBOUND_DMARC_POLICY=reject


async def check(settings: SmtpSettings, raw: bytes, mail_from: str, helo: str | None, peer: Any) -> Checked:
    """The checks of a message from ``peer``; ``Checked(raw)`` when it is not checked (``checked``)."""
    ip = checked(settings, peer)
    if ip is None:
        return Checked(raw)
    await dmarc.ready()
    dns = for_resolver(settings.dns_resolver)
    zones = [zone.strip().lower() for zone in settings.inbound_dnsbl.split(",") if zone.strip()]
    try:
        result, listed = await asyncio.gather(
            authenticate(raw, ip, helo or "", mail_from, dns),
            _within(dnsbl.listings(ip, zones, dns), [], []),
        )
    except Exception:  # a bug here must not refuse mail, nor let it pass as verified (_within catches most)
        log.exception("checking the sender of a message failed")
        failed = DkimResult("temperror", "", "", "")
        result = SenderAuth("temperror", _spf_identity(mail_from, helo or "")[0], [failed], "temperror")
        listed = []
    authserv_id = settings.hostname
    disposition = _disposition(result, settings.inbound_dmarc_policy)
    field = result.header(authserv_id)
    if listed:  # which lists, and their codes: a list's codes say why (RFC 5782 2.1)
        entries = ", ".join(f"{_value(listing.zone)}={_value(listing.code)}" for listing in listed)
        field += f"X-Agentmx-Dnsbl: {entries}\r\n".encode()
    return Checked(
        rename_claims(raw, authserv_id),
        field,
        Verdict(result.from_verified, spam=disposition == "spam" or bool(listed)),
        refused=disposition == "reject",
    )


def _disposition(result: SenderAuth, setting: str) -> str:
    """What a DMARC failure calls for, as the domain asks and the setting allows (RFC 7489 6.7):
    "reject", "spam" or "".

    ``pct=`` (apply the policy to a sample) is not followed: every failing message is treated alike.
    """
    if result.dmarc != "fail" or setting == "ignore" or result.requested not in ("quarantine", "reject"):
        return ""
    return "reject" if result.requested == "reject" and setting == "reject" else "spam"


async def authenticate(raw: bytes, ip: str, helo: str, mail_from: str, dns: AuthDns) -> SenderAuth:
    identity, spf_domain, sender = _spf_identity(mail_from, helo)
    domains, clear = _from_domains(raw)
    spf_result, dkim_results, *policies = await asyncio.gather(
        _within(spf.check_host(ip, spf_domain, sender, helo, dns), "temperror", "permerror"),
        _within(dkim_verify.verify(raw, dns), [DkimResult("temperror", "", "", "")], []),
        *(_within(_policy(domain, dns), "temperror", None) for domain in domains),
    )
    # Each From domain is judged on its own (RFC 7489 6.6.1 allows it): a second address must not
    # take a domain's policy away. The From is verified only when it is one clear address.
    judged = []
    for domain, policy in zip(domains, policies, strict=True):
        strict_spf = isinstance(policy, dmarc.Policy) and policy.spf_strict
        strict_dkim = isinstance(policy, dmarc.Policy) and policy.dkim_strict
        aligned = (spf_result == "pass" and dmarc.aligned(spf_domain, domain, strict_spf)) or any(
            r.result == "pass" and dmarc.aligned(r.domain, domain, strict_dkim) for r in dkim_results
        )
        judged.append((domain, policy, aligned))
    verified = clear and len(judged) == 1 and judged[0][2]
    outcome, shown, requested = _dmarc_result(judged)
    return SenderAuth(spf_result, identity, dkim_results, outcome, shown, requested, from_verified=verified)


def _dmarc_result(judged: list[tuple[str, Any, bool]]) -> tuple[str, str | None, str | None]:
    """(result, the From domain it is about, that domain's request) from each domain's (domain,
    policy, aligned): a failure wins, the strictest first; then a temperror; then a pass."""
    failed = [(d, p) for d, p, aligned in judged if isinstance(p, dmarc.Policy) and not aligned]
    if failed:
        domain, policy = max(failed, key=lambda item: _STRICTNESS.index(item[1].request))
        return "fail", domain, policy.request
    for domain, policy, _ in judged:
        if policy == "temperror":
            return "temperror", domain, None
    for domain, policy, _ in judged:
        if isinstance(policy, dmarc.Policy):
            return "pass", domain, policy.request
    return "none", judged[0][0] if judged else None, None


def _spf_identity(mail_from: str, helo: str) -> tuple[tuple[str, str], str, str]:
    """(how Authentication-Results names it, the domain SPF checks, the sender for its macros)."""
    if "@" in mail_from:
        domain = mail_from.rpartition("@")[2]
        return ("smtp.mailfrom", mail_from), _a_label(domain) or domain.lower(), mail_from
    # A null reverse path (bounces): SPF checks the HELO name (RFC 7208 2.3).
    return ("smtp.helo", helo), _a_label(helo) or helo.lower(), f"postmaster@{helo}"


async def _within(work: Any, on_timeout: Any, on_error: Any) -> Any:
    """One check's result; ``on_timeout`` past the deadline, ``on_error`` if it fails on hostile input
    (each check on its own: one failing must not hide the others, nor the From domain's policy)."""
    try:
        async with asyncio.timeout(DEADLINE):
            return await work
    except TimeoutError:
        return on_timeout
    except Exception:  # noqa: BLE001
        log.warning("a sender check failed on this message", exc_info=True)
        return on_error


async def _policy(from_domain: str, dns: AuthDns) -> dmarc.Policy | str | None:
    try:
        return await dmarc.policy_for(from_domain, dns)
    except DnsTempError:
        return "temperror"


def _from_domains(raw: bytes) -> tuple[list[str], bool]:
    """The domains of the From addresses, and whether the From is clear: one field, one address,
    and a header without a lone CR or LF (RFC 7489 6.6.1).

    Read as the stored message is read (Python's parser, which also ends a line at a lone CR), so
    the domains checked are those of the From an agent sees.
    """
    head = header_fields.head(raw)
    try:
        fields = header_fields.parse(head)
        addresses = [address for address in header_fields.addresses(fields, "From") if address]
    except Exception:  # noqa: BLE001 (hostile fields: deep comment nesting makes getaddresses recurse)
        return [], False
    domains: list[str] = []
    for address in addresses:
        domain = _a_label(address.rpartition("@")[2]) if "@" in address else None
        if not domain or not spf.valid_domain(domain):
            return [], False  # an address without a usable domain: nothing to judge
        if domain not in domains:
            domains.append(domain)
    clear = len(fields.get_all("From") or []) == 1 and len(addresses) == 1 and not _BARE_LINE_END.search(head)
    return domains[:MAX_FROM_DOMAINS], clear


def _a_label(domain: str) -> str | None:
    """The domain as DNS asks for it (münchen.de -> xn--mnchen-3ya.de), lower case; None if it has no such form."""
    domain = domain.strip().lower().rstrip(".")
    return domain if domain.isascii() else to_ascii_domain(domain)


def rename_claims(raw: bytes, authserv_id: str) -> bytes:
    """Rename Authentication-Results fields that claim to be ours (RFC 8601 5: a sender's forgery).

    The authserv-id is read as RFC 8601 2.2 writes it: after comments and folding, maybe quoted,
    in any case, with or without a final dot. Lines end at CR or LF alone too, as the parser reads them.
    """
    head = header_fields.head(raw)
    ours = authserv_id.lower().rstrip(".")
    starts = [m.start() for m in _AR_FIELD.finditer(head) if _authserv_id(head, m.end()) == ours]
    if not starts:
        return raw
    pieces, previous = [], 0
    for start in starts:
        pieces += [head[previous:start], b"X-Original-"]
        previous = start
    return b"".join(pieces) + head[previous:] + raw[len(head) :]


def _authserv_id(head: bytes, value_start: int) -> str:
    """The authserv-id of the field whose value starts at ``value_start``."""
    end = value_start
    while True:  # the field's value: up to a line end not followed by folding white space
        end = min((i for i in (head.find(b"\r", end), head.find(b"\n", end)) if i >= 0), default=len(head))
        next_line = end + (2 if head[end : end + 2] == b"\r\n" else 1)
        if end >= len(head) or head[next_line : next_line + 1] not in (b" ", b"\t"):
            break
        end = next_line
    value = head[value_start:end].decode("latin-1")
    for _ in range(_MAX_COMMENT_DEPTH):  # innermost comments first
        value, count = _COMMENT.subn(" ", value)
        if not count:
            break
    token = value.split(";", 1)[0].split()
    return token[0].strip('"').lower().rstrip(".") if token else ""
