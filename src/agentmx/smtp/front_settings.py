"""The settings SMTP session code reads, and a front end's copy of them without pydantic.

A front end (smtp/frontend.py) gets its settings over the link, already checked by the server
(workers._settings_for). Building a ``Settings`` from them imported pydantic and pydantic-settings
for values it only reads: about a third of a front end's start-up CPU, on the server's way to ready.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, fields
from typing import Any, Protocol

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class SmtpSettings(Protocol):
    """What SMTP sessions read: a ``Settings`` in the server, a ``FrontEndSettings`` in a front end."""

    @property
    def domain(self) -> str: ...
    @property
    def public_host(self) -> str: ...
    @property
    def log_level(self) -> str: ...
    @property
    def http_max_connections(self) -> int: ...
    @property
    def dns_resolver(self) -> str: ...
    @property
    def inbound_sender_checks(self) -> bool: ...
    @property
    def inbound_dmarc_policy(self) -> str: ...
    @property
    def inbound_dnsbl(self) -> str: ...
    @property
    def smtp_port(self) -> int: ...
    @property
    def smtp_max_connections(self) -> int: ...
    @property
    def smtp_max_connections_per_ip(self) -> int: ...
    @property
    def smtp_max_message_size(self) -> int: ...
    @property
    def smtp_timeout(self) -> float: ...
    @property
    def smtp_stress_timeout(self) -> float: ...
    @property
    def smtp_error_limit(self) -> int: ...
    @property
    def smtp_junk_command_limit(self) -> int: ...
    @property
    def smtp_hop_limit(self) -> int: ...
    @property
    def smtp_tls_cert(self) -> str: ...
    @property
    def smtp_tls_key(self) -> str: ...
    @property
    def smtp_tls(self) -> bool: ...
    @property
    def effective_smtp_host(self) -> str: ...
    @property
    def hostname(self) -> str: ...
    @property
    def trusted_networks(self) -> tuple[IPNetwork, ...]: ...


@dataclass(frozen=True)
class FrontEndSettings:
    """The server's checked values, read as they came; the derived ones as ``Settings`` derives them."""

    host: str
    domain: str
    public_host: str
    log_level: str
    http_max_connections: int
    dns_resolver: str
    inbound_sender_checks: bool
    inbound_dmarc_policy: str
    inbound_dnsbl: str
    smtp_host: str
    smtp_port: int
    smtp_max_connections: int
    smtp_max_connections_per_ip: int
    smtp_max_message_size: int
    smtp_timeout: float
    smtp_stress_timeout: float
    smtp_error_limit: int
    smtp_junk_command_limit: int
    smtp_hop_limit: int
    smtp_tls_cert: str
    smtp_tls_key: str
    smtp_trusted_networks: str

    @classmethod
    def of(cls, values: dict[str, Any]) -> FrontEndSettings:
        """From the server's ``model_dump``: a value it did not send is a KeyError, not a default."""
        return cls(**{f.name: values[f.name] for f in fields(cls)})

    @property
    def effective_smtp_host(self) -> str:
        return self.smtp_host or self.host

    @property
    def smtp_tls(self) -> bool:
        return bool(self.smtp_tls_cert)

    @property
    def hostname(self) -> str:
        return self.public_host or self.domain

    @functools.cached_property
    def trusted_networks(self) -> tuple[IPNetwork, ...]:
        return networks_of(self.smtp_trusted_networks)


def networks_of(text: str) -> tuple[IPNetwork, ...]:
    """The networks of a comma-separated list (AGENTMX_SMTP_TRUSTED_NETWORKS, checked by Settings)."""
    parts = (part.strip() for part in text.split(","))
    return tuple(ipaddress.ip_network(part, strict=False) for part in parts if part)
