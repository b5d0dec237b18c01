"""Inbound sender checks: SPF, DKIM and DMARC against a real DNS server on loopback, and the
Authentication-Results field and ``unauthenticated`` label they give mail received over SMTP."""

from __future__ import annotations

import asyncio
import base64
import smtplib
import time
from collections.abc import Callable, Iterator

import dkim
import pytest
from agentmail import AgentMail
from agentmail.environment import AgentMailEnvironment
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from agentmx.domains import keys
from agentmx.domains.records import Record, dkim_value, zone_line
from agentmx.mail import auth_dns, dkim_verify, dnsbl, sender_auth, spf
from agentmx.mail.sender_auth import SenderAuth
from agentmx.outbound.dkim import sign
from agentmx.settings import Settings
from agentmx.testing.dns import LoopbackDNS
from agentmx.testing.server import ServerProcess, free_port
from mail_support import download, make_message, smtp_send

KEY = keys.generate()
OTHER_KEY = keys.generate()
ED_KEY = ed25519.Ed25519PrivateKey.generate()
ED_PUBLIC = base64.b64encode(ED_KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()

ZONE = [
    # sender.test: everything a careful sender publishes; 127.0.0.1 is its mail server
    Record("TXT", "sender.test", "v=spf1 ip4:127.0.0.0/24 -all"),
    Record("TXT", f"{KEY.selector}._domainkey.sender.test", dkim_value(KEY.public_key)),
    Record("TXT", "_dmarc.sender.test", "v=DMARC1; p=reject; sp=quarantine"),
    Record("TXT", "ed._domainkey.signed.test", f"v=DKIM1; k=ed25519; p={ED_PUBLIC}"),
    Record("TXT", f"{KEY.selector}._domainkey.signed.test", dkim_value(KEY.public_key)),
    # bank.test: somebody else's domain, sending from 192.0.2.1 only
    Record("TXT", "bank.test", "v=spf1 ip4:192.0.2.1 -all"),
    Record("TXT", "_dmarc.bank.test", "v=DMARC1; p=reject"),
    # SPF's mechanisms and limits
    Record("TXT", "soft.test", "v=spf1 ip4:192.0.2.1 ~all"),
    Record("TXT", "neutral.test", "v=spf1 ip4:192.0.2.1"),
    Record("TXT", "include.test", "v=spf1 include:sender.test -all"),
    Record("TXT", "redirect.test", "v=spf1 redirect=sender.test"),
    Record("TXT", "mx.test", "v=spf1 mx/24 -all"),
    Record("MX", "mx.test", "mail.mx.test", 10),
    Record("A", "mail.mx.test", "127.0.0.9"),
    Record("TXT", "a.test", "v=spf1 a:host.a.test -all"),
    Record("A", "host.a.test", "127.0.0.1"),
    Record("TXT", "exists.test", "v=spf1 exists:%{i}.allow.exists.test -all"),
    Record("A", "127.0.0.1.allow.exists.test", "127.0.0.2"),
    Record("TXT", "six.test", "v=spf1 ip6:2001:db8::/32 -all"),
    Record("TXT", "two.test", "v=spf1 -all"),
    Record("TXT", "two.test", "v=spf1 +all"),
    Record("TXT", "loop.test", "v=spf1 include:loop.test -all"),
    Record("TXT", "voids.test", "v=spf1 a:n1.voids.test a:n2.voids.test a:n3.voids.test -all"),
    Record("TXT", "typo.test", "v=spf1 ip4:192.0.2.1 alll"),
    Record("TXT", "latetypo.test", "v=spf1 +all alll"),
    Record("TXT", "deadinclude.test", "v=spf1 include:nothing.test -all"),
    # keys a hostile or careless sender publishes
    Record("TXT", "bad._domainkey.sender.test", "v=DKIM1; p=!!!not base64"),
    Record(
        "TXT",
        "ed._domainkey.sender.test",
        "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=",
    ),
    Record("TXT", "_dmarc.odd.test", "v=DMARC1; p=maybe; sp=reject; adkim=x"),
    Record("TXT", "odd.test", "v=spf1 ip4:300.1.1.1/99 a:%{z} -all"),
    # records a review found mishandled
    Record("TXT", "huge.test", "v=spf1 a/" + "9" * 3000 + " -all"),
    Record("TXT", "late.test", "v=spf1 ip4:127.0.0.1 ip4:bad -all"),
    Record("TXT", "macro.test", "v=spf1 +all a:%{z}"),
    Record("TXT", "dotless.test", "v=spf1 ınclude:sender.test -all"),
    Record("TXT", "_dmarc.sub.bank.test", "v=DMARC1; p=bogus"),
    Record("TXT", "sha1only._domainkey.signed.test", "v=DKIM1; h=sha1; p=" + KEY.public_key),
    Record("TXT", "web._domainkey.signed.test", "v=DKIM1; s=web; p=" + KEY.public_key),
    # DNS blocklists: one lists 127.0.0.1, one answers with its own error code
    Record("A", "1.0.0.127.bl.test", "127.0.0.4"),
    Record("A", "1.0.0.127.errors.test", "127.255.255.254"),
]


def _zone_text(records: list[Record]) -> str:
    lines = []
    for record in records:
        if record.type == "A":  # zone_line knows the record types a domain publishes; tests add addresses
            lines.append(f"{record.name}.\t300\tIN\tA\t{record.value}")
        else:
            lines.append(zone_line(record))
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def dns() -> Iterator[LoopbackDNS]:
    with LoopbackDNS(_zone_text(ZONE)) as server:
        yield server


def _check_host(dns: LoopbackDNS, ip: str, domain: str) -> str:
    return asyncio.run(spf.check_host(ip, domain, f"someone@{domain}", "client.example", _resolver(dns)))


def _resolver(dns: LoopbackDNS) -> auth_dns.AuthDns:
    auth_dns.for_resolver.cache_clear()  # one event loop per asyncio.run: no resolver state carried over
    return auth_dns.for_resolver(dns.address)


@pytest.mark.parametrize(
    ("ip", "domain", "result"),
    [
        ("127.0.0.1", "sender.test", "pass"),
        ("192.0.2.7", "sender.test", "fail"),
        ("192.0.2.7", "soft.test", "softfail"),
        ("192.0.2.7", "neutral.test", "neutral"),
        ("127.0.0.1", "include.test", "pass"),
        ("127.0.0.1", "redirect.test", "pass"),
        ("192.0.2.7", "redirect.test", "fail"),
        ("127.0.0.1", "mx.test", "pass"),  # mail.mx.test is 127.0.0.9, and /24
        ("127.0.0.1", "a.test", "pass"),
        ("127.0.0.2", "a.test", "fail"),
        ("127.0.0.1", "exists.test", "pass"),  # %{i} expands to the client's address
        ("127.0.0.3", "exists.test", "fail"),
        ("2001:db8::25", "six.test", "pass"),
        ("2001:db9::25", "six.test", "fail"),
        ("127.0.0.1", "nothing.test", "none"),
        ("127.0.0.1", "two.test", "permerror"),
        ("127.0.0.1", "loop.test", "permerror"),  # more than 10 lookups
        ("127.0.0.1", "voids.test", "permerror"),  # more than 2 void lookups
        ("192.0.2.7", "typo.test", "permerror"),
        ("192.0.2.7", "latetypo.test", "permerror"),  # a syntax error anywhere, even after a match (4.6)
        ("127.0.0.1", "deadinclude.test", "permerror"),
        ("127.0.0.1", "not a domain", "none"),
        ("127.0.0.1", "huge.test", "permerror"),  # int() of 3,000 digits raised before
        ("127.0.0.1", "late.test", "permerror"),  # a syntax error after the matching term (4.6)
        ("127.0.0.1", "macro.test", "permerror"),
        ("127.0.0.1", "dotless.test", "permerror"),  # "ınclude" is not "include"
    ],
)
def test_spf_check_host(dns: LoopbackDNS, ip: str, domain: str, result: str) -> None:
    assert _check_host(dns, ip, domain) == result


def test_spf_temperror_when_dns_does_not_answer() -> None:
    nobody = auth_dns.for_resolver(f"127.0.0.1:{free_port()}")
    assert (
        asyncio.run(spf.check_host("127.0.0.1", "sender.test", "a@sender.test", "h", nobody)) == "temperror"
    )


def _authenticate(dns: LoopbackDNS, raw: bytes, ip: str = "127.0.0.1", mail_from: str = "") -> SenderAuth:
    return asyncio.run(sender_auth.authenticate(raw, ip, "client.example", mail_from, _resolver(dns)))


def _signed(sender: str, domain: str = "sender.test", key: keys.DkimKey = KEY) -> bytes:
    raw = make_message("agent@agentmx.localhost", sender=sender, text="Please wire the money.").as_bytes()
    return sign(raw, domain=domain, selector=key.selector, private_key=key.private_pem)


def test_signed_aligned_mail_passes(dns: LoopbackDNS) -> None:
    checks = _authenticate(dns, _signed("Alice <alice@sender.test>"), mail_from="bounce@sender.test")
    assert (checks.spf, checks.dmarc, checks.requested, checks.from_verified) == (
        "pass",
        "pass",
        "reject",
        True,
    )
    assert [(r.result, r.domain, r.selector) for r in checks.dkim] == [("pass", "sender.test", KEY.selector)]
    field = checks.header("mx.agentmx.test").decode()
    assert field.startswith(
        "Authentication-Results: mx.agentmx.test;\r\n\tspf=pass smtp.mailfrom=bounce@sender.test;"
    )
    assert f"dkim=pass header.d=sender.test header.s={KEY.selector} header.b=" in field
    assert field.endswith("dmarc=pass (p=reject) header.from=sender.test\r\n")


def test_dkim_alone_verifies_from(dns: LoopbackDNS) -> None:
    """Forwarded mail: SPF fails for the forwarder's address, the signature still holds."""
    checks = _authenticate(dns, _signed("alice@sender.test"), ip="192.0.2.9", mail_from="list@sender.test")
    assert (checks.spf, checks.dmarc, checks.from_verified) == ("fail", "pass", True)


def test_spoofed_from_fails_dmarc(dns: LoopbackDNS) -> None:
    raw = make_message("agent@agentmx.localhost", sender="CEO <ceo@bank.test>").as_bytes()
    checks = _authenticate(dns, raw, mail_from="ceo@bank.test")
    assert (checks.spf, checks.dkim, checks.dmarc, checks.from_verified) == ("fail", [], "fail", False)
    assert checks.header("h").endswith(b"dkim=none;\r\n\tdmarc=fail (p=reject) header.from=bank.test\r\n")


def test_alignment_needs_the_from_domain(dns: LoopbackDNS) -> None:
    """SPF and DKIM pass for sender.test, but the From field says bank.test."""
    checks = _authenticate(dns, _signed("ceo@bank.test"), mail_from="bounce@sender.test")
    assert checks.spf == "pass" and checks.dkim[0].result == "pass"
    assert (checks.dmarc, checks.from_verified) == ("fail", False)


def test_subdomain_uses_the_organizational_policy(dns: LoopbackDNS) -> None:
    raw = make_message("agent@agentmx.localhost", sender="news@mail.sender.test").as_bytes()
    checks = _authenticate(dns, raw, mail_from="bounce@sender.test")  # relaxed alignment: same organization
    assert (checks.dmarc, checks.requested, checks.from_verified) == ("pass", "quarantine", True)


def test_tampered_or_unknown_signatures(dns: LoopbackDNS) -> None:
    tampered = _signed("alice@sender.test").replace(b"wire the money", b"wire the monkey")
    checks = _authenticate(dns, tampered, ip="192.0.2.9", mail_from="alice@sender.test")
    assert ([r.result for r in checks.dkim], checks.dmarc) == (["fail"], "fail")
    unknown_key = _signed("alice@sender.test", key=OTHER_KEY)
    checks = _authenticate(dns, unknown_key, ip="192.0.2.9", mail_from="alice@sender.test")
    assert [r.result for r in checks.dkim] == ["permerror"]


def test_no_policy_still_tells_whether_from_is_verified(dns: LoopbackDNS) -> None:
    raw = make_message("agent@agentmx.localhost", sender="x@a.test").as_bytes()
    checks = _authenticate(dns, raw, mail_from="x@a.test")
    assert (checks.spf, checks.dmarc, checks.requested, checks.from_verified) == ("pass", "none", None, True)
    two_from = raw.replace(b"From: x@a.test", b"From: x@a.test, y@bank.test")
    assert _authenticate(dns, two_from, mail_from="x@a.test").from_verified is False


def test_values_are_quoted_and_claims_renamed() -> None:
    checks = SenderAuth("none", ("smtp.mailfrom", 'odd "local" part@example.com'))
    assert b'smtp.mailfrom="odd \\"local\\" part@example.com"' in checks.header("h")
    raw = (
        b"Authentication-Results: mx.ours.test; dmarc=pass\r\n"
        b"Authentication-Results: mx.theirs.test; dmarc=fail\r\n"
        b"Subject: Authentication-Results: mx.ours.test;\r\n\r\n"
        b"Authentication-Results: mx.ours.test; body\r\n"
    )
    assert sender_auth.rename_claims(raw, "mx.ours.test") == raw.replace(
        b"Authentication-Results: mx.ours.test; dmarc=pass",
        b"X-Original-Authentication-Results: mx.ours.test; dmarc=pass",
    )


def _checking_server(
    fresh_server: Callable[..., ServerProcess], dns: LoopbackDNS, workers: str, **settings: str
) -> tuple[ServerProcess, AgentMail, str]:
    """A server that checks mail from loopback too (the test's own), its client and a new inbox."""
    env = {
        "AGENTMX_DNS_RESOLVER": dns.address,
        "AGENTMX_SMTP_TRUSTED_NETWORKS": "",
        "AGENTMX_SMTP_WORKERS": workers,
        **{f"AGENTMX_{name.upper()}": value for name, value in settings.items()},
    }
    server = fresh_server("sqlite", env=env).start()
    client = AgentMail(
        api_key=server.create_key(),
        environment=AgentMailEnvironment(http=server.base_url, websockets=server.ws_url),
    )
    return server, client, client.inboxes.create().inbox_id


@pytest.mark.parametrize("workers", ["0", "1"])
def test_smtp_mail_gets_checked_and_labelled(
    dns: LoopbackDNS, fresh_server: Callable[..., ServerProcess], workers: str
) -> None:
    server, client, inbox = _checking_server(
        fresh_server, dns, workers, inbound_label_unauthenticated="true", public_host="mx.agentmx.test"
    )
    genuine = _signed("Alice <alice@sender.test>")
    forged_claim = b"Authentication-Results: mx.agentmx.test; dmarc=pass header.from=bank.test\r\n"
    spoofed = forged_claim + make_message(inbox, subject="urgent", sender="CEO <ceo@bank.test>").as_bytes()
    smtp_send(server, [inbox], genuine, mail_from="bounce@sender.test")
    smtp_send(server, [inbox], spoofed, mail_from="ceo@bank.test")

    listed = client.inboxes.messages.list(inbox, include_unauthenticated=True, include_spam=True).messages
    by_subject = {m.subject: client.inboxes.messages.get(inbox, m.message_id) for m in listed}
    assert set(by_subject) == {"Hello", "urgent"}
    ours = {s: m.headers["Authentication-Results"] for s, m in by_subject.items() if m.headers}
    assert ours["Hello"].startswith("mx.agentmx.test; spf=pass smtp.mailfrom=bounce@sender.test; dkim=pass")
    assert ours["Hello"].endswith("dmarc=pass (p=reject) header.from=sender.test")
    assert ours["urgent"].endswith("dkim=none; dmarc=fail (p=reject) header.from=bank.test")
    assert "unauthenticated" not in by_subject["Hello"].labels
    assert {"unauthenticated", "spam"} <= set(by_subject["urgent"].labels)  # spam: bank.test asks p=reject
    assert [m.subject for m in client.inboxes.messages.list(inbox).messages] == ["Hello"]
    raw = download(
        client.inboxes.messages.get_raw(inbox, by_subject["urgent"].message_id).download_url
    ).content
    assert b"\r\nX-Original-Authentication-Results: mx.agentmx.test; dmarc=pass" in raw


@pytest.mark.parametrize("workers", ["0", "1"])
def test_dmarc_reject_policy_refuses_spoofed_mail(
    dns: LoopbackDNS, fresh_server: Callable[..., ServerProcess], workers: str
) -> None:
    server, client, inbox = _checking_server(fresh_server, dns, workers, inbound_dmarc_policy="reject")
    spoofed = make_message(inbox, subject="urgent", sender="CEO <ceo@bank.test>").as_bytes()
    with pytest.raises(smtplib.SMTPDataError) as refused:
        smtp_send(server, [inbox], spoofed, mail_from="ceo@bank.test")
    assert refused.value.smtp_code == 550 and b"5.7.1" in refused.value.smtp_error
    smtp_send(server, [inbox], _signed("alice@sender.test"), mail_from="bounce@sender.test")
    assert [m.subject for m in client.inboxes.messages.list(inbox, include_spam=True).messages] == ["Hello"]


@pytest.mark.parametrize("workers", ["0", "1"])
def test_a_looping_message_failing_dmarc_is_refused_as_a_loop(
    dns: LoopbackDNS, fresh_server: Callable[..., ServerProcess], workers: str
) -> None:
    """The loop is the more fundamental refusal (and needs no DNS): 554 5.4.6, not DMARC's 550."""
    server, _, inbox = _checking_server(fresh_server, dns, workers, inbound_dmarc_policy="reject")
    received = b"Received: from relay.example ([192.0.2.1]) by mx.example; Mon, 1 Dec 2025 10:00:00 +0000\r\n"
    spoofed = make_message(inbox, subject="looping", sender="CEO <ceo@bank.test>").as_bytes()
    with pytest.raises(smtplib.SMTPDataError) as refused:
        smtp_send(server, [inbox], received * 50 + spoofed, mail_from="ceo@bank.test")
    assert refused.value.smtp_code == 554 and refused.value.smtp_error.startswith(b"5.4.6 "), refused.value


def test_trusted_networks_are_not_checked(
    dns: LoopbackDNS, fresh_server: Callable[..., ServerProcess]
) -> None:
    env = {"AGENTMX_DNS_RESOLVER": dns.address, "AGENTMX_SMTP_WORKERS": "0"}  # loopback is trusted by default
    server = fresh_server("sqlite", env=env).start()
    client = AgentMail(
        api_key=server.create_key(),
        environment=AgentMailEnvironment(http=server.base_url, websockets=server.ws_url),
    )
    inbox = client.inboxes.create().inbox_id
    smtp_send(
        server, [inbox], make_message(inbox, sender="ceo@bank.test").as_bytes(), mail_from="ceo@bank.test"
    )
    (message,) = client.inboxes.messages.list(inbox).messages
    headers = client.inboxes.messages.get(inbox, message.message_id).headers or {}
    assert "Authentication-Results" not in headers


def test_bounces_are_checked_by_helo_and_signatures_are_capped(dns: LoopbackDNS) -> None:
    raw = make_message("agent@agentmx.localhost", sender="mailer-daemon@sender.test").as_bytes()
    checks = asyncio.run(sender_auth.authenticate(raw, "127.0.0.1", "sender.test", "", _resolver(dns)))
    assert (checks.spf, checks.spf_identity, checks.from_verified) == (
        "pass",
        ("smtp.helo", "sender.test"),
        True,
    )
    signed = _signed("alice@sender.test")
    field = signed[: signed.index(b"\r\nFrom:") + 2]
    many = field * 20 + signed[len(field) :]
    assert len(_authenticate(dns, many, mail_from="alice@sender.test").dkim) == 5


HOSTILE_FROM = [
    "",
    "<>",
    "a@",
    "@sender.test",
    "x@[127.0.0.1]",
    "=?utf-8?b?w7xiZXI=?= <alice@sender.test>",
    "alice@sender.test, ceo@bank.test",
    '"quoted, name" <ceo@bank.test>',
    "ceo@odd.test",
    "ünï@cödé.test",
    "a@" + "x" * 300 + ".test",
]
HOSTILE_SIGNATURES = [
    "v=1; a=rsa-sha256; d=sender.test; s=bad; h=from; bh=; b=",
    "v=1; a=ed25519-sha256; d=sender.test; s=ed; h=from; bh=AAAA; b=AAAA",
    "d=;s=",
    "garbage without tags",
    "v=1; a=rsa-sha1; d=sender.test; s=" + KEY.selector + "; h=from:to; l=999999; bh=AAAA; b=AAAA",
    "v=1; a=rsa-sha256; d=" + "y" * 300 + "; s=s; h=from; bh=AA; b=AA",
]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sender=st.sampled_from(HOSTILE_FROM),
    signatures=st.lists(st.sampled_from(HOSTILE_SIGNATURES), max_size=3),
    mail_from=st.sampled_from(["", "a@odd.test", "x@typo.test", "b@loop.test", "@", "a@b@c"]),
    body=st.binary(max_size=300),
)
def test_hostile_mail_gets_a_verdict(
    dns: LoopbackDNS, sender: str, signatures: list[str], mail_from: str, body: bytes
) -> None:
    head = "".join(f"DKIM-Signature: {value}\r\n" for value in signatures)
    raw = f"{head}From: {sender}\r\nSubject: x\r\n\r\n".encode("utf-8", "surrogateescape") + body
    checks = _authenticate(dns, raw, mail_from=mail_from)
    assert checks.spf in spf.RESULTS and checks.dmarc in ("pass", "fail", "none", "temperror")
    assert all(r.result in ("pass", "policy", "fail", "temperror", "permerror") for r in checks.dkim)
    field = checks.header("mx.agentmx.test")
    assert field.isascii() and field.endswith(b"\r\n") and b"\n" not in field.replace(b"\r\n", b"")


@pytest.mark.parametrize(
    ("policy", "sender", "refused", "spam"),
    [
        ("label", "ceo@bank.test", False, True),  # p=reject
        ("label", "news@mail.sender.test", False, True),  # sp=quarantine
        ("reject", "ceo@bank.test", True, False),
        ("reject", "news@mail.sender.test", False, True),
        ("ignore", "ceo@bank.test", False, False),
    ],
)
def test_dmarc_policy_setting(dns: LoopbackDNS, policy: str, sender: str, refused: bool, spam: bool) -> None:
    settings = Settings(
        inbound_dmarc_policy=policy, smtp_trusted_networks="", dns_resolver=dns.address, public_host="mx.test"
    )
    raw = make_message("agent@agentmx.localhost", sender=sender).as_bytes()
    auth_dns.for_resolver.cache_clear()
    checked = asyncio.run(
        sender_auth.check(settings, raw, "x@bank.test", "client.example", ("127.0.0.1", 25))
    )
    assert (checked.refused, checked.verdict) == (refused, sender_auth.Verdict(verified=False, spam=spam))
    assert checked.field.startswith(b"Authentication-Results: mx.test;") and b"dmarc=fail" in checked.field


def test_dnsbl_listing_labels_spam(dns: LoopbackDNS) -> None:
    settings = Settings(
        smtp_trusted_networks="", dns_resolver=dns.address, inbound_dnsbl="bl.test, errors.test,none.test"
    )
    raw = _signed("alice@sender.test")
    auth_dns.for_resolver.cache_clear()
    checked = asyncio.run(
        sender_auth.check(settings, raw, "a@sender.test", "client.example", ("127.0.0.1", 25))
    )
    assert checked.verdict == sender_auth.Verdict(
        verified=True, spam=True
    )  # authentic, from a listed address
    assert checked.field.endswith(b"\r\nX-Agentmx-Dnsbl: bl.test=127.0.0.4\r\n")
    assert dnsbl.query_name("2001:db8::1", "bl.test") == "1.0.0.0." + "0." * 20 + "8.b.d.0.1.0.0.2.bl.test"


_VALUE = st.lists(
    st.sampled_from(["a", "Bc", " ", "\t", "  ", "\r\n\t", "\r\n ", "x=y;", "=?utf-8?q?z?="]), max_size=8
)
_BODY_LINE = st.sampled_from(["", " ", "hello world", "a\tb", "trailing  ", "  lead", "x \t y", ".dot"])


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    headers=st.lists(
        st.tuples(st.sampled_from(["Subject", "To", "X-Note", "subject", "Cc"]), _VALUE), max_size=5
    ),
    lines=st.lists(_BODY_LINE, max_size=8),
    blank_lines_after=st.integers(0, 2),
    canonicalize=st.sampled_from(
        [(b"simple", b"simple"), (b"relaxed", b"relaxed"), (b"relaxed", b"simple"), (b"simple", b"relaxed")]
    ),
    signed=st.lists(st.sampled_from([b"subject", b"to", b"x-note", b"cc", b"date"]), max_size=4),
    length=st.booleans(),
    ed=st.booleans(),
    change=st.sampled_from(
        ["", "body", "from", "top subject", "bottom subject", "line-end spaces", "blank line"]
    ),
)
def test_dkim_verdicts_match_dkimpy(
    dns: LoopbackDNS,
    headers: list[tuple[str, list[str]]],
    lines: list[str],
    blank_lines_after: int,
    canonicalize: tuple[bytes, bytes],
    signed: list[bytes],
    length: bool,
    ed: bool,
    change: str,
) -> None:
    """Messages dkimpy signs, changed or not in transit: our verdict is dkimpy's."""
    head = "From: Alice <alice@signed.test>\r\n" + "".join(f"{n}:{''.join(v)}\r\n" for n, v in headers)
    body = "\r\n".join(lines) + "\r\n" * (1 + blank_lines_after)
    message = (head + "\r\n" + body).encode()
    if ed:
        selector, private = (
            b"ed",
            base64.b64encode(ED_KEY.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())),
        )
        record, algorithm = f"v=DKIM1; k=ed25519; p={ED_PUBLIC}", b"ed25519-sha256"
    else:
        selector, private, record, algorithm = (
            KEY.selector.encode(),
            KEY.private_pem,
            dkim_value(KEY.public_key),
            b"rsa-sha256",
        )
    message = (
        dkim.sign(
            message,
            selector,
            b"signed.test",
            private,
            canonicalize=canonicalize,
            include_headers=[b"from", *signed],
            length=length,
            signature_algorithm=algorithm,
        )
        + message
    )
    if change == "body":
        message += b"appended\r\n"
    elif change == "from":
        message = message.replace(b"alice@signed.test", b"mallory@signed.test")
    elif change == "top subject":
        message = b"Subject: added on top\r\n" + message
    elif change == "bottom subject":
        message = message.replace(b"\r\n\r\n", b"\r\nSubject: added below\r\n\r\n", 1)
    elif change == "line-end spaces":
        message = message.replace(b"\r\n", b" \r\n").replace(b" \r\n", b"\r\n", 1)  # not the first line
    elif change == "blank line":
        message += b"\r\n"

    def key_record(name: bytes, timeout: float = 5) -> bytes:
        return record.encode()

    try:
        expected = "pass" if dkim.verify(message, dnsfunc=key_record) else "fail"
    except dkim.DKIMException:
        expected = "fail"
    event(f"dkimpy: {expected}")
    (ours,) = asyncio.run(dkim_verify.verify(message, _resolver(dns)))
    # "policy": the signature holds for the l= part, which the appended text is not (ours counts it for less)
    assert ("pass" if ours.result in ("pass", "policy") else "fail") == expected, ours
    assert ours.result != "policy" or (length and change in ("body", "blank line")), ours


def test_review_findings_on_hostile_headers(dns: LoopbackDNS) -> None:
    # A lone CR ends a header line for the parser that stores the message: the From checked must be
    # the From stored, so such a header verifies nothing.
    raw = b"Subject: wire\rFrom: CEO <ceo@bank.test>\r\nFrom: x@a.test\r\n\r\nPay.\r\n"
    checks = _authenticate(dns, raw, mail_from="x@a.test")
    # ... and each From domain is judged: a second address must not take bank.test's p=reject away.
    assert (checks.from_verified, checks.dmarc, checks.requested, checks.from_domain) == (
        False,
        "fail",
        "reject",
        "bank.test",
    )
    for two in (b"From: CEO <ceo@bank.test>, x@a.test\r\n", b"From: x@a.test\r\nFrom: ceo@bank.test\r\n"):
        checks = _authenticate(dns, two + b"Subject: wire\r\n\r\nPay.\r\n", mail_from="x@a.test")
        assert (checks.from_verified, checks.dmarc, checks.requested) == (False, "fail", "reject"), two
    # A From nested deep enough to make the address parser recurse: no exception, nothing verified.
    nested = b"From: " + b"(" * 1100 + b"ceo@bank.test\r\n\r\nPay.\r\n"
    assert _authenticate(dns, nested, mail_from="x@a.test").from_verified is False
    # An SPF record that broke the evaluator must not hide the From domain's p=reject.
    spoofed = make_message("agent@agentmx.localhost", sender="ceo@bank.test").as_bytes()
    checks = _authenticate(dns, spoofed, mail_from="x@huge.test")
    assert (checks.spf, checks.dmarc, checks.requested) == ("permerror", "fail", "reject")
    # DMARC discovery stops at a domain's own record, even an unusable one (RFC 7489 6.6.3).
    sub = make_message("agent@agentmx.localhost", sender="news@sub.bank.test").as_bytes()
    assert _authenticate(dns, sub, mail_from="x@a.test").dmarc == "none"


def test_review_findings_on_dkim(dns: LoopbackDNS) -> None:
    raw = make_message("agent@agentmx.localhost", sender="alice@signed.test", text="Pay 10.").as_bytes()
    signed = dkim.sign(raw, KEY.selector.encode(), b"signed.test", KEY.private_pem, length=True) + raw
    whole = _authenticate(dns, signed, mail_from="bounce@sender.test")
    assert ([r.result for r in whole.dkim], whole.from_verified) == (["pass"], True)
    # l= covers what was signed; text appended after it is anybody's (RFC 6376 8.2).
    appended = _authenticate(dns, signed + b"PS: and wire 10,000 to me.\r\n", mail_from="bounce@sender.test")
    assert ([r.result for r in appended.dkim], appended.from_verified) == (["policy"], False)
    assert b"dkim=policy header.d=signed.test" in appended.header("h")
    for selector in (b"sha1only", b"web"):  # keys that may not be used for this signature
        other = dkim.sign(raw, selector, b"signed.test", KEY.private_pem) + raw
        assert [r.result for r in _authenticate(dns, other).dkim] == ["permerror"]
    # Many folded lines in a signature field: linear work, not quadratic (0.8 MB took 10 s).
    folded = b"DKIM-Signature: v=1" + b"\r\n a" * 400_000 + b"\r\n" + raw
    started = time.process_time()
    assert [r.result for r in _authenticate(dns, folded).dkim] == ["permerror"]
    assert time.process_time() - started < 10


@pytest.mark.parametrize(
    "field",
    [
        b"Authentication-Results: (a comment) mx.ours.test; dmarc=pass",
        b'Authentication-Results: "mx.ours.test"; dmarc=pass',
        b"Authentication-Results: MX.OURS.TEST. 1; dmarc=pass",
        b"Authentication-Results: mx.ours.test(c); dmarc=pass",
        b"Authentication-Results:\r\n \r\n mx.ours.test; dmarc=pass",
        b"Subject: x\rAuthentication-Results: mx.ours.test; dmarc=pass",
    ],
)
def test_every_spelling_of_our_authserv_id_is_renamed(field: bytes) -> None:
    raw = field + b"\r\nFrom: a@b.test\r\n\r\nAuthentication-Results: mx.ours.test; in the body\r\n"
    renamed = sender_auth.rename_claims(raw, "mx.ours.test")
    assert renamed.count(b"X-Original-Authentication-Results:") == 1
    assert renamed.endswith(b"\r\n\r\nAuthentication-Results: mx.ours.test; in the body\r\n")
