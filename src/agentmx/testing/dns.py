"""A small authoritative DNS server on loopback (UDP and TCP), serving a zone given as BIND text.

Tests point agentmx at it with AGENTMX_DNS_RESOLVER=127.0.0.1:<port> and swap the zone with
``set_zone`` to publish, break or remove records.
"""

from __future__ import annotations

import threading
from typing import Any

from dnslib import QTYPE, RCODE, RR, DNSLabel
from dnslib.server import BaseResolver, DNSLogger, DNSServer

from agentmx.testing.server import free_port


class ZoneResolver(BaseResolver):
    """Exact names first, then RFC 4592 wildcards (``*.<closest existing ancestor>``)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.records: list[Any] = []
        # While holding, a query takes the zone as it is on arrival and answers only once released:
        # a slow resolver, for checks that overlap.
        self.holding = False
        self.held = 0
        self.release = threading.Event()
        self.failures: dict[tuple[tuple[bytes, ...], str], str] = {}  # (name, type) -> rcode name

    def set_zone(self, text: str) -> None:
        records = list(RR.fromZone(text)) if text.strip() else []
        with self.lock:
            self.records = records

    def resolve(self, request: Any, handler: Any) -> Any:
        reply = request.reply()
        qname = request.q.qname
        qtype = QTYPE[request.q.qtype]
        with self.lock:
            records = list(self.records)
            hold = self.holding
            self.held += hold
            failure = self.failures.get((_key(qname), qtype))
        if hold:
            self.release.wait(timeout=10)
        if failure is not None:
            reply.header.rcode = getattr(RCODE, failure)
            return reply
        found = _lookup(qname, records)
        if found is None:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        for rr in found:
            rtype = QTYPE[rr.rtype]
            if rtype == qtype or qtype == "ANY" or rtype == "CNAME":
                reply.add_answer(rr)
        return reply


def _key(label: DNSLabel) -> tuple[bytes, ...]:
    return tuple(part.lower() for part in label.label)


def _lookup(qname: DNSLabel, records: list[Any]) -> list[Any] | None:
    """Records owned by qname (possibly via a wildcard); [] = name exists without data; None = NXDOMAIN."""
    want = _key(qname)
    by_name: dict[tuple[bytes, ...], list[Any]] = {}
    for rr in records:
        by_name.setdefault(_key(rr.rname), []).append(rr)
    if want in by_name:
        return by_name[want]
    # Every ancestor of an owner name exists (empty non-terminals such as _domainkey.<domain>).
    nodes = {name[i:] for name in by_name for i in range(len(name))}
    if want in nodes:
        return []
    for cut in range(1, len(want)):
        ancestor = want[cut:]
        wildcard = by_name.get((b"*", *ancestor))
        if wildcard:
            synthesized = []
            for rr in wildcard:
                copy = RR.fromZone(rr.toZone())[0]
                copy.rname = qname
                synthesized.append(copy)
            return synthesized
        if ancestor in nodes:
            return None  # the closest encloser has no wildcard
    return None


class LoopbackDNS:
    """``with LoopbackDNS(zone_text) as dns: ...``; ``dns.address`` is "127.0.0.1:<port>"."""

    def __init__(self, zone: str = "") -> None:
        self.resolver = ZoneResolver()
        self.resolver.set_zone(zone)
        self.port = 0
        self._servers: list[DNSServer] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def set_zone(self, text: str) -> None:
        self.resolver.set_zone(text)

    def fail(self, name: str, qtype: str, rcode: str = "SERVFAIL") -> None:
        """Answer queries for ``name``/``qtype`` with ``rcode`` alone (a broken authoritative server)."""
        with self.resolver.lock:
            self.resolver.failures[(_key(DNSLabel(name)), qtype)] = rcode

    def hold(self) -> None:
        """Hold the answers to queries arriving from now on (each with the zone of its arrival)."""
        with self.resolver.lock:
            self.resolver.release.clear()
            self.resolver.held = 0
            self.resolver.holding = True

    def stop_holding(self) -> None:
        """Queries arriving from now on are answered at once; those held still wait for release()."""
        with self.resolver.lock:
            self.resolver.holding = False

    def release(self) -> None:
        self.resolver.release.set()

    def start(self) -> LoopbackDNS:
        logger = DNSLogger(log="-request,-reply,-truncated,-error", prefix=False)
        for _ in range(20):
            port = free_port()
            try:
                udp = DNSServer(self.resolver, address="127.0.0.1", port=port, logger=logger)
                tcp = DNSServer(self.resolver, address="127.0.0.1", port=port, tcp=True, logger=logger)
            except OSError:
                continue
            self.port = port
            self._servers = [udp, tcp]
            for server in self._servers:
                server.start_thread()
            return self
        raise RuntimeError("no free port for the test DNS server")

    def stop(self) -> None:
        for server in self._servers:
            server.stop()
            server.server.server_close()
        self._servers = []

    def __enter__(self) -> LoopbackDNS:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
