"""SPF (RFC 7208): may this client IP send mail for this domain?

``check_host`` is the function of section 4, over ``AuthDns``. Its limits keep a hostile record
cheap: 10 DNS-querying terms (include, a, mx, ptr, exists, redirect), 2 void lookups, 10 MX names,
records of 4,096 characters.
``ptr`` (section 5.5: "SHOULD NOT be used") never matches here, so it costs no reverse lookups.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from dataclasses import dataclass

from agentmx.mail.auth_dns import AuthDns, DnsTempError

MAX_LOOKUPS = 10
MAX_VOID_LOOKUPS = 2
MAX_MX_NAMES = 10
MAX_RECORD = 4096  # characters: real records fit a 512-byte answer (3.4); a huge one is only work
RESULTS = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror")
_QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
# ASCII only: under Unicode rules "ınclude" (dotless i) matches "include" ignoring case, and \d takes
# any script's digits.
_FLAGS = re.IGNORECASE | re.ASCII
_MECHANISM = re.compile(r"^([+\-~?]?)(all|include|a|mx|ptr|ip4|ip6|exists)(?=$|[:/])(.*)$", _FLAGS)
_MODIFIER = re.compile(r"^([a-z][a-z0-9_.\-]*)=(.*)$", _FLAGS)
_CIDR = re.compile(r"^(.*?)(?:/([0-9]{1,3}))?(?://([0-9]{1,3}))?$", re.ASCII)
_MACRO = re.compile(r"%(?:\{([a-z])([0-9]{0,3})(r?)([.\-+,/_=]*)\}|%|_|-)", _FLAGS)
# A macro-string (7.1): visible characters, and "%" only in a macro.
_MACRO_STRING = re.compile(r"^(?:[!-$&-~]|%\{[slodiphv][0-9]{0,3}r?[.\-+,/_=]*\}|%%|%_|%-)*$", _FLAGS)
_IP4_NETWORK = re.compile(r"^[0-9]{1,3}(?:\.[0-9]{1,3}){3}(?:/[0-9]{1,2})?$", re.ASCII)
_IP6_NETWORK = re.compile(r"^[0-9a-f:.]+(?:/[0-9]{1,3})?$", _FLAGS)

IP = ipaddress.IPv4Address | ipaddress.IPv6Address


class _PermError(Exception):
    pass


class _TempError(Exception):
    pass


@dataclass
class _Query:
    """One check_host evaluation: the inputs and the lookup counters its includes share."""

    ip: IP
    sender: str  # local-part@domain of MAIL FROM (postmaster@<helo> when it was empty)
    helo: str
    dns: AuthDns
    lookups: int = 0
    voids: int = 0

    def count_lookup(self) -> None:
        self.lookups += 1
        if self.lookups > MAX_LOOKUPS:
            raise _PermError("more than 10 DNS lookups")

    def count_void(self, answers: list[str]) -> list[str]:
        if not answers:
            self.voids += 1
            if self.voids > MAX_VOID_LOOKUPS:
                raise _PermError("more than 2 void lookups")
        return answers


async def check_host(ip: str, domain: str, sender: str, helo: str, dns: AuthDns) -> str:
    """One of ``RESULTS`` for ``ip`` sending as ``sender`` (whose domain is ``domain``)."""
    try:
        query = _Query(ipaddress.ip_address(ip), sender, helo, dns)
    except ValueError:
        return "none"
    try:
        return await _evaluate(query, domain)
    except _PermError:
        return "permerror"
    except (_TempError, DnsTempError):
        return "temperror"


def valid_domain(domain: str) -> bool:
    labels = domain.rstrip(".").split(".")
    return len(labels) > 1 and all(0 < len(label) <= 63 for label in labels) and len(domain) <= 253


async def _evaluate(query: _Query, domain: str) -> str:
    if not valid_domain(domain):
        return "none"
    records = [r for r in await query.dns.txt(domain) if re.match(r"^v=spf1(?: |$)", r, re.IGNORECASE)]
    if not records:
        return "none"
    if len(records) > 1:
        raise _PermError(f"{domain} publishes {len(records)} SPF records")
    if len(records[0]) > MAX_RECORD:
        raise _PermError(f"{domain}'s SPF record is longer than {MAX_RECORD} characters")
    mechanisms, redirect = _parse(records[0])
    for qualifier, name, argument in mechanisms:
        if await _matches(query, domain, name, argument):
            return _QUALIFIERS[qualifier or "+"]
    if redirect is not None:
        query.count_lookup()
        target = _expand(redirect, query, domain)
        result = await _evaluate(query, target)
        if result == "none":
            raise _PermError(f"redirect to {target}, which has no SPF record")
        return result
    return "neutral"


def _parse(record: str) -> tuple[list[tuple[str, str, str]], str | None]:
    """The mechanisms (qualifier, name, argument) and the redirect= target; a syntax error anywhere
    is a permerror before anything is evaluated (4.6)."""
    mechanisms: list[tuple[str, str, str]] = []
    modifiers: dict[str, str] = {}
    for term in record.split()[1:]:
        modifier = _MODIFIER.match(term)
        if modifier:
            name = modifier.group(1).lower()
            if name in modifiers and name in ("redirect", "exp"):
                raise _PermError(f"two {name}= modifiers")
            modifiers[name] = modifier.group(2)  # exp= only explains a fail; unknown ones are ignored (6)
            continue
        mechanism = _MECHANISM.match(term)
        if mechanism is None:
            raise _PermError(f"unknown term {term!r}")
        qualifier, name, argument = mechanism.groups()
        _check_syntax(name.lower(), argument)
        mechanisms.append((qualifier, name.lower(), argument))
    if "redirect" in modifiers and not _MACRO_STRING.match(modifiers["redirect"]):
        raise _PermError("bad redirect= domain-spec")
    return mechanisms, modifiers.get("redirect")


def _check_syntax(name: str, argument: str) -> None:
    """The argument's grammar (5), checked before any term is evaluated."""
    if name == "all":
        ok = not argument
    elif name in ("ip4", "ip6"):
        spec = argument[1:] if argument.startswith(":") else ""
        ok = bool((_IP4_NETWORK if name == "ip4" else _IP6_NETWORK).match(spec))
        if ok:
            _network(spec, name)  # a permerror when it is no network of that version
    elif name in ("include", "exists"):
        ok = argument.startswith(":") and len(argument) > 1 and bool(_MACRO_STRING.match(argument[1:]))
    else:  # a, mx, ptr: an optional domain-spec, and for a and mx CIDR lengths
        spec, _, _ = _split_cidr(argument) if name != "ptr" else (argument, 0, 0)
        ok = not spec or (spec.startswith(":") and len(spec) > 1 and bool(_MACRO_STRING.match(spec[1:])))
    if not ok:
        raise _PermError(f"bad argument for {name}: {argument!r}")


async def _matches(query: _Query, domain: str, name: str, argument: str) -> bool:
    if name == "all":
        if argument:
            raise _PermError("all takes no argument")
        return True
    if name in ("ip4", "ip6"):
        return query.ip in _network(argument[1:] if argument.startswith(":") else "", name)
    if name == "include":
        query.count_lookup()
        result = await _evaluate(query, _domain_argument(argument, query, domain, required=True))
        if result == "temperror":
            raise _TempError
        if result in ("permerror", "none"):
            raise _PermError("include of a domain without a usable SPF record")
        return result == "pass"
    if name == "exists":
        query.count_lookup()
        target = _domain_argument(argument, query, domain, required=True)
        return bool(query.count_void(await query.dns.addresses(target)))  # always A (5.7)
    if name == "ptr":
        query.count_lookup()
        return False
    query.count_lookup()  # a and mx
    spec, cidr4, cidr6 = _split_cidr(argument)
    target = _domain_argument(spec, query, domain, required=False)
    ipv6 = query.ip.version == 6
    prefix = cidr6 if ipv6 else cidr4
    hosts = [target]
    if name == "mx":
        hosts = query.count_void(await query.dns.mx(target))
        if len(hosts) > MAX_MX_NAMES:
            raise _PermError(f"{target} has more than 10 MX names")
    for host in hosts:
        addresses = await query.dns.addresses(host, ipv6)
        if name == "a":
            query.count_void(addresses)
        if any(query.ip in ipaddress.ip_network(f"{a}/{prefix}", strict=False) for a in addresses):
            return True
    return False


def _split_cidr(argument: str) -> tuple[str, int, int]:
    match = _CIDR.match(argument)
    assert match is not None  # every string matches
    spec, cidr4, cidr6 = match.groups()
    four, six = int(cidr4 or 32), int(cidr6 or 128)
    if four > 32 or six > 128:
        raise _PermError(f"bad CIDR length in {argument!r}")
    return spec, four, six


def _domain_argument(argument: str, query: _Query, domain: str, *, required: bool) -> str:
    if not argument:
        if required:
            raise _PermError("missing domain-spec")
        return domain
    if not argument.startswith(":"):
        raise _PermError(f"bad argument {argument!r}")
    return _expand(argument[1:], query, domain)


def _network(spec: str, name: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        network = ipaddress.ip_network(spec, strict=False)
    except ValueError:
        raise _PermError(f"bad {name} network {spec!r}") from None
    if (network.version == 4) != (name == "ip4"):
        raise _PermError(f"{name}:{spec} is the other IP version")
    return network


def _expand(spec: str, query: _Query, domain: str) -> str:
    """Macro expansion (7), then the domain-spec's length rule: drop left labels past 253 bytes."""
    if not spec:
        raise _PermError("empty domain-spec")

    def replace(match: re.Match[str]) -> str:
        whole = match.group(0)
        if whole == "%%":
            return "%"
        if whole == "%_":
            return " "
        if whole == "%-":
            return "%20"
        letter, digits, reverse, delimiters = match.groups()
        value = _macro_value(letter.lower(), query, domain)
        parts = re.split("[" + re.escape(delimiters or ".") + "]", value)
        if reverse:
            parts.reverse()
        if digits:
            if int(digits) == 0:
                raise _PermError("macro keeps 0 labels")
            parts = parts[-int(digits) :]
        expanded = ".".join(parts)
        return urllib.parse.quote(expanded, safe="") if letter.isupper() else expanded

    if re.search(r"%(?![{%_\-])", spec):
        raise _PermError(f"bad macro in {spec!r}")
    result = _MACRO.sub(replace, spec).rstrip(".")
    if len(result) > 253:  # drop labels from the left, counted once (not re-split per label)
        labels = result.split(".")
        size, first = len(result), 0
        while size > 253 and first < len(labels) - 1:
            size -= len(labels[first]) + 1
            first += 1
        result = ".".join(labels[first:])
    return result


def _macro_value(letter: str, query: _Query, domain: str) -> str:
    local, _, sender_domain = query.sender.rpartition("@")
    if letter == "s":
        return query.sender
    if letter == "l":
        return local or "postmaster"
    if letter == "o":
        return sender_domain
    if letter == "d":
        return domain
    if letter == "i":
        if query.ip.version == 4:
            return str(query.ip)
        return ".".join(query.ip.exploded.replace(":", ""))
    if letter == "p":
        return "unknown"  # no validated reverse name: ptr lookups are not made
    if letter == "v":
        return "in-addr" if query.ip.version == 4 else "ip6"
    if letter == "h":
        return query.helo
    raise _PermError(f"macro letter {letter!r} outside exp=")
