"""``host[:port]`` settings: a name, IPv4, or IPv6 in brackets (``[::1]:2525``) or bare (``::1``)."""

from __future__ import annotations

import ipaddress

FORMS = "host, host:port, [IPv6] or [IPv6]:port"


def split_host_port(value: str, default_port: int) -> tuple[str, int]:
    """The host and port; ValueError naming the accepted forms for anything else.

    A bare IPv6 address has no port (``::1:2525`` is an address): a port needs the brackets.
    """
    value = value.strip()
    port_text: str | None = None
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"must be {FORMS}")
        if rest:
            port_text = rest[1:]
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
    else:
        host = value
        # Two colons or more, no brackets: an IPv6 address or nothing ("relay:25:25" is no host name).
        if ":" in host and not is_ip_address(host):
            raise ValueError(f"must be {FORMS}")
    if not host or any(ch.isspace() for ch in host):
        raise ValueError(f"must be {FORMS}")
    if port_text is None:
        return host, default_port
    if not (port_text.isascii() and port_text.isdigit() and 0 < int(port_text) < 65536):
        raise ValueError(f"port {port_text!r} is not 1-65535 ({FORMS})")
    return host, int(port_text)


def is_ip_address(text: str) -> bool:
    """An IPv4 or IPv6 address (no brackets)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
