"""Domain records, zone files and record judgement, without a server."""

from __future__ import annotations

import asyncio

import dns.rdatatype
import dns.zone
import pytest

from agentmx.domains import dns_check, keys, records
from agentmx.domains.dns_check import INVALID, MISSING, VALID, judge
from agentmx.host_port import split_host_port
from agentmx.testing.dns import LoopbackDNS

HOST = "mx.agentmx.test"


def spec(**flags: bool) -> records.DomainSpec:
    key = keys.generate()
    return records.DomainSpec("example.test", HOST, key.selector, key.public_key, **flags)


def by_purpose(spec_: records.DomainSpec) -> dict[str, records.Record]:
    return {r.purpose: r for r in records.required_records(spec_)}


def test_records_follow_the_flags() -> None:
    assert set(by_purpose(spec())) == {"spf", "dkim", "dmarc", "mx"}
    assert set(by_purpose(spec(inbound_enabled=False))) == {"spf", "dkim", "dmarc"}
    everything = by_purpose(spec(subdomains_enabled=True, tracking_enabled=True))
    assert everything["wildcard_mx"].name == "*.example.test"
    assert everything["tracking"].type == "CNAME" and everything["tracking"].value == HOST


def test_zone_file_splits_long_txt_and_round_trips() -> None:
    s = spec(subdomains_enabled=True, tracking_enabled=True)
    text = records.zone_file(s.name, records.required_records(s))
    dkim_line = next(line for line in text.splitlines() if "_domainkey" in line)
    assert dkim_line.count('"') == 4  # a 2048-bit key needs two character-strings
    zone = dns.zone.from_text(text, check_origin=False)
    rdataset = zone.find_rdataset(f"{s.dkim_selector}._domainkey", dns.rdatatype.TXT)
    joined = b"".join(next(iter(rdataset)).strings).decode()
    assert joined == records.dkim_value(s.dkim_public_key)


def test_dkim_private_key_round_trips_through_encryption() -> None:
    key = keys.generate()
    token = keys.encrypt(b"s" * 32, key.private_pem)
    assert b"PRIVATE KEY" not in token.encode()
    assert keys.decrypt(b"s" * 32, token) == key.private_pem
    with pytest.raises(Exception):  # noqa: B017 (any failure: another secret cannot read it)
        keys.decrypt(b"t" * 32, token)


def test_judge_record_states() -> None:
    r = by_purpose(spec(tracking_enabled=True))
    assert judge(r["mx"], []).status == MISSING
    assert judge(r["mx"], [f"10 {HOST}"]).status == VALID
    assert judge(r["mx"], [f"10 {HOST}", f"20 backup.{HOST}"]).status == VALID
    assert judge(r["mx"], [f"10 {HOST}", "5 aspmx.l.google.com"]).reason == "duplicate_records"
    assert judge(r["mx"], ["10 elsewhere.test"]).reason == "value_mismatch"
    assert judge(r["tracking"], ["other.test"]).status == INVALID
    # SPF: other mechanisms are fine as long as ours is there; two SPF records are an error.
    assert judge(r["spf"], [f"v=spf1 include:_spf.example.net a:{HOST} -all"]).status == VALID
    assert judge(r["spf"], ["v=spf1 -all"]).reason == "value_mismatch"
    assert judge(r["spf"], [f"v=spf1 a:{HOST} ~all", "v=spf1 -all"]).reason == "duplicate_records"
    assert judge(r["spf"], ["google-site-verification=abc"]).status == MISSING
    # DMARC: any policy the owner prefers.
    assert judge(r["dmarc"], ["v=DMARC1; p=quarantine; rua=mailto:d@example.test"]).status == VALID
    assert judge(r["dmarc"], ["v=DMARC1; p=bogus"]).reason == "value_mismatch"
    # DKIM: the key must be ours.
    assert judge(r["dkim"], [r["dkim"].value.replace(" ", "")]).status == VALID
    assert judge(r["dkim"], ["v=DKIM1; k=rsa; p=AAAA"]).reason == "value_mismatch"
    # No answer from DNS at all is not a verdict on the record.
    assert judge(r["dkim"], None).answered is False


def test_domain_status_from_records() -> None:
    r = by_purpose(spec())
    ok = [dns_check.RecordCheck(x, VALID) for x in r.values()]
    assert dns_check.domain_status(ok) == ("VERIFIED", None)
    missing = [*ok[:-1], dns_check.RecordCheck(ok[-1].record, MISSING)]
    assert dns_check.domain_status(missing) == ("PENDING", "dns_records_missing")
    invalid = [*missing[:-2], dns_check.RecordCheck(ok[-2].record, INVALID, "value_mismatch"), missing[-1]]
    assert dns_check.domain_status(invalid) == ("INVALID", "dns_records_invalid")


def test_resolver_and_relay_addresses() -> None:
    assert split_host_port("127.0.0.1", 53) == ("127.0.0.1", 53)
    assert split_host_port("127.0.0.1:5353", 53) == ("127.0.0.1", 5353)
    assert split_host_port("[::1]:5353", 53) == ("::1", 5353)
    assert split_host_port("[::1]", 25) == ("::1", 25)
    assert split_host_port("::1", 25) == ("::1", 25)
    assert split_host_port(" relay.example:2525 ", 25) == ("relay.example", 2525)
    for bad in (
        "relay.example:",
        "relay.example:smtp",
        "[::1]:0",
        "[::1]x",
        "[::1",
        ":25",
        "a b:25",
        "h:99999",
    ):
        with pytest.raises(ValueError, match="host, host:port"):
            split_host_port(bad, 25)


def test_loopback_dns_wildcards_and_empty_non_terminals() -> None:
    s = spec(subdomains_enabled=True)
    zone = records.zone_file(s.name, records.required_records(s))

    async def ask(server: LoopbackDNS, name: str, rdtype: str) -> list[str] | None:
        resolver = dns_check.make_resolver(server.address, 2)
        return await dns_check.lookup(resolver, name, rdtype)

    with LoopbackDNS(zone) as server:
        assert asyncio.run(ask(server, "a.b.example.test", "MX")) == [f"10 {HOST}"]
        assert asyncio.run(ask(server, "_domainkey.example.test", "TXT")) == []  # exists, no data
        assert asyncio.run(ask(server, "example.test", "TXT")) == [records.spf_value(HOST)]
        server.set_zone("")
        assert asyncio.run(ask(server, "example.test", "TXT")) == []
