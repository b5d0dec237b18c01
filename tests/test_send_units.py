"""Pure parts of sending: message composition, DKIM signing, DSN parsing, return paths, key syntax; and
the SMTP client against a real aiosmtpd peer on loopback."""

from __future__ import annotations

import asyncio
import base64
from datetime import UTC, datetime
from email import message_from_bytes, policy

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from agentmx.errors import ValidationFailed
from agentmx.mail import compose
from agentmx.mail.compose import Composition, OutAttachment
from agentmx.outbound import dkim as outbound_dkim
from agentmx.outbound import dsn, return_path, smtp_client
from agentmx.services import idempotency
from send_support import Sink


def _comp(**kw: object) -> Composition:
    base: dict[str, object] = {
        "from_addr": compose.format_from("Agent", "agent@example.com"),
        "message_id": "<m1@example.com>",
        "date": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        "to": ["bob@example.org"],
        "subject": "Hi",
        "text": "hello",
    }
    base.update(kw)
    return Composition(**base)  # type: ignore[arg-type]


def _parse(raw: bytes):  # type: ignore[no-untyped-def]
    return message_from_bytes(raw, policy=policy.default)


def test_headers_and_alternative_body() -> None:
    raw = compose.to_bytes(
        compose.build(_comp(html="<p>hello</p>", cc=["c@example.org"], reply_to=["r@x.org"]))
    )
    msg = _parse(raw)
    assert msg["From"] == "Agent <agent@example.com>"
    assert msg["To"] == "bob@example.org" and msg["Cc"] == "c@example.org" and msg["Reply-To"] == "r@x.org"
    assert msg["Message-ID"] == "<m1@example.com>" and msg["Subject"] == "Hi"
    assert msg.get_content_type() == "multipart/alternative"
    assert msg.get_body(("plain",)).get_content().strip() == "hello"
    assert msg.get_body(("html",)).get_content().strip() == "<p>hello</p>"
    assert b"\r\n" in raw and b"Bcc" not in raw


def test_inline_attachments_make_multipart_related() -> None:
    png = b"\x89PNG fake"
    comp = _comp(
        html='<img src="cid:logo">',
        attachments=[
            OutAttachment(png, filename="logo.png", content_type="image/png", content_id="logo"),
            OutAttachment(b"%PDF", filename="doc.pdf", content_type="application/pdf"),
        ],
    )
    msg = _parse(compose.to_bytes(compose.build(comp)))
    assert msg.get_content_type() == "multipart/mixed"
    related = msg.get_payload()[0]
    assert related.get_content_type() == "multipart/related"
    inline = related.get_payload()[1]
    assert inline["Content-ID"] == "<logo>" and inline.get_content() == png
    assert [p.get_filename() for p in msg.iter_attachments()] == ["doc.pdf"]


def test_header_injection_is_refused() -> None:
    with pytest.raises(ValueError):
        compose.build(_comp(subject="x\r\nBcc: victim@example.org"))
    with pytest.raises(ValueError):
        compose.build(_comp(headers={"X-Evil": "a\r\nBcc: victim@example.org"}))


def test_extra_headers_cannot_override_reserved_ones() -> None:
    msg = _parse(compose.to_bytes(compose.build(_comp(headers={"From": "evil@x.org", "X-Ok": "1"}))))
    assert msg["From"] == "Agent <agent@example.com>" and msg["X-Ok"] == "1"


def test_subject_prefixes_do_not_double() -> None:
    assert compose.reply_subject("Hello") == "Re: Hello"
    assert compose.reply_subject("Re: Hello") == "Re: Hello"
    assert compose.reply_subject("RE: Hello") == "RE: Hello"
    assert compose.forward_subject("Hello") == "Fwd: Hello"
    assert compose.forward_subject("Fwd: Hello") == "Fwd: Hello"
    assert compose.forward_subject("FW: Hello") == "FW: Hello"
    assert compose.reply_subject(None) == "Re:"


def test_references_chain() -> None:
    assert compose.thread_references("<c@x>", ["<a@x>", "<b@x>"]) == ["<a@x>", "<b@x>", "<c@x>"]
    assert compose.thread_references("<c@x>", ["<c@x>"]) == ["<c@x>"]


def test_forward_body_quotes_the_original() -> None:
    src = compose.ForwardSource(
        from_addr="Alice <alice@example.com>",
        to=["agent@example.com"],
        cc=[],
        subject="Report",
        date=datetime(2026, 1, 1, tzinfo=UTC),
        text="Numbers inside",
        html=None,
    )
    text, html = compose.forward_bodies(src, "FYI", None)
    assert text is not None and text.index("FYI") < text.index("---------- Forwarded message ---------")
    assert "From: Alice <alice@example.com>" in text and text.rstrip().endswith("Numbers inside")
    assert html is None


def _rsa_key() -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem, b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


def test_dkim_signature_verifies_with_dkimpy() -> None:
    pem, record = _rsa_key()
    raw = compose.to_bytes(
        compose.build(_comp(html="<b>x</b>", attachments=[OutAttachment(b"1", filename="a")]))
    )
    signed = outbound_dkim.sign(raw, domain="example.com", selector="agentmx", private_key=pem)
    assert signed.startswith(b"DKIM-Signature:")

    def dns(name: bytes, timeout: int = 5) -> bytes | None:
        return record if name == b"agentmx._domainkey.example.com." else None

    assert dkim.verify(signed, dnsfunc=dns)
    tampered = signed.replace(b"Subject: Hi", b"Subject: Ho")
    assert not dkim.verify(tampered, dnsfunc=dns)


def test_dkim_candidates_walk_to_the_parent() -> None:
    assert outbound_dkim._candidates("a.b.example.com") == ["a.b.example.com", "b.example.com", "example.com"]


def test_return_path_round_trip() -> None:
    secret = b"k" * 32
    mine = return_path.make("msg_abc123", "example.com", secret, "Ann@Example.org")
    assert mine.startswith("bounces+msg_abc123-") and mine.endswith("@example.com")
    assert len(mine.partition("@")[0]) <= 64  # RFC 5321's limit on a local part
    path = return_path.parse(mine.upper())  # some MTAs change the case
    assert path is not None and path.message_pk == "msg_abc123"
    others = ["bob@example.org", "ann@example.org", "cy@example.net"]
    assert return_path.recipient(secret, path, others) == "ann@example.org"
    assert return_path.recipient(b"x" * 32, path, others) is None  # another server's secret
    assert return_path.recipient(secret, path, ["bob@example.org"]) is None

    untagged = return_path.parse("<bounces+msg_x@example.com>")
    assert untagged == return_path.ReturnPath("msg_x", None)
    assert return_path.make("msg_x", "example.com") == "bounces+msg_x@example.com"
    # Untagged (local deliveries, and mail sent before tags): only a message's one recipient.
    assert return_path.recipient(secret, untagged, ["bob@example.org"]) == "bob@example.org"
    assert return_path.recipient(secret, untagged, others) is None
    assert return_path.parse("agent@example.com") is None
    assert return_path.parse("bounces+@example.com") is None
    assert return_path.parse("bounces+msg_x") is None


def test_dsn_parsing() -> None:
    raw = (
        b"From: MAILER-DAEMON@mx.example.org\r\nTo: bounces+msg_1@example.com\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nfailed\r\n"
        b"--b\r\nContent-Type: message/delivery-status\r\n\r\n"
        b"Reporting-MTA: dns; mx.example.org\r\n\r\n"
        b"Final-Recipient: rfc822; Gone@Example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        b"Diagnostic-Code: smtp; 550 5.1.1\r\n  user unknown\r\n\r\n"
        b"Final-Recipient: rfc822; slow@example.org\r\nAction: delayed\r\nStatus: 4.4.7\r\n"
        b"\r\n--b--\r\n"
    )
    statuses = dsn.parse_report(raw)
    assert [(s.address, s.action, s.status) for s in statuses] == [
        ("gone@example.org", "failed", "5.1.1"),
        ("slow@example.org", "delayed", "4.4.7"),
    ]
    assert statuses[0].diagnostic == "smtp; 550 5.1.1 user unknown"
    assert dsn.parse_report(b"Subject: not a report\r\n\r\nhi\r\n") == []


def test_a_dsn_suppresses_only_the_address_it_names() -> None:
    """To an alias's return path: a member's failure bounces the alias's mail, but only the member is
    known undeliverable, so the alias is not suppressed."""
    member_failed = [
        dsn.RecipientStatus(
            "member@example.org", "failed", "5.1.1", "smtp; 550 no such user", "team@example.org"
        ),
        dsn.RecipientStatus("other@example.org", "delivered", "2.0.0"),
    ]
    for_alias = dsn._bounce(member_failed, "team@example.org")
    assert for_alias is not None and for_alias.status == "bounced" and not for_alias.suppress
    assert for_alias.text == "5.1.1 member@example.org: smtp; 550 no such user"
    outcome = dsn._bounce(member_failed, "member@example.org")
    assert outcome is not None and outcome.status == "bounced" and outcome.text.startswith("5.1.1")
    assert outcome.suppress
    # A member's failure said to be of another original recipient is not this one's.
    assert dsn._bounce(member_failed, "else@example.org") is None
    delayed = [dsn.RecipientStatus("member@example.org", "delayed", "4.4.7")]
    assert dsn._bounce(delayed, "member@example.org") is None


def test_idempotency_key_syntax() -> None:
    assert idempotency.parse_key(None) is None
    assert idempotency.parse_key("abc-DEF_1.2~3") == "abc-DEF_1.2~3"
    assert idempotency.parse_key("x" * 256) == "x" * 256
    for bad in ("", " ", "x" * 257, "a b", "a@b", "a/b", "ü"):
        with pytest.raises(ValidationFailed):
            idempotency.parse_key(bad)


def test_fingerprint_is_order_independent() -> None:
    one = idempotency.fingerprint("send", "a@x", {"to": "b@y", "text": "t"})
    two = idempotency.fingerprint("send", "a@x", {"text": "t", "to": "b@y"})
    assert one == two
    assert one != idempotency.fingerprint("send", "a@x", {"text": "u", "to": "b@y"})
    assert one != idempotency.fingerprint("forward", "a@x", {"text": "t", "to": "b@y"})


def test_feedback_report_parsing() -> None:
    raw = (
        b"From: fbl@provider.test\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type=feedback-report; boundary="F"\r\n\r\n'
        b"--F\r\nContent-Type: text/plain\r\n\r\nabuse report\r\n"
        b"--F\r\nContent-Type: message/feedback-report\r\n\r\n"
        b"Feedback-Type: abuse\r\nVersion: 1\r\nOriginal-Rcpt-To: <User@Example.org>\r\n\r\n"
        b"--F--\r\n"
    )
    feedback = dsn.parse_feedback(raw)
    assert feedback == dsn.Feedback("abuse", ["user@example.org"])
    assert dsn.parse_feedback(b"Subject: hi\r\n\r\nx\r\n") is None


RAW = b"From: a@agentmx.test\r\nTo: b@remote.test\r\nSubject: hi\r\n\r\nhello\r\n"


def _send(sink: Sink, rcpts: list[str], starttls: str = "opportunistic") -> dict[str, smtp_client.Reply]:
    conn = smtp_client.Connection("127.0.0.1", sink.port, "mx.remote.test", "agentmx.test", starttls=starttls)
    envelopes = [smtp_client.Envelope("bounces+m@agentmx.test", r) for r in rcpts]
    return asyncio.run(smtp_client.send(conn, envelopes, RAW))


@pytest.mark.parametrize("address", ["a@b\u00fccher.test", "j\u00fcrgen@remote.test"])
def test_a_non_ascii_address_fails_alone(address: str) -> None:
    """Without SMTPUTF8 it cannot go on the wire: that recipient fails, the others are answered."""
    sink = Sink().start()
    try:
        replies = _send(sink, ["ok-1@remote.test", address, "ok-2@remote.test"])
    finally:
        sink.stop()
    assert replies["ok-1@remote.test"].ok and replies["ok-2@remote.test"].ok
    assert replies[address].code == 553 and "5.6.7" in replies[address].text
    assert [r.rcpt_tos for r in sink.handler.received] == [["ok-1@remote.test"], ["ok-2@remote.test"]]


def test_a_non_ascii_address_goes_with_smtputf8() -> None:
    sink = Sink(smtputf8=True).start()
    try:
        replies = _send(sink, ["j\u00fcrgen@b\u00fccher.test"])
    finally:
        sink.stop()
    assert replies["j\u00fcrgen@b\u00fccher.test"].ok
    assert [r.rcpt_tos for r in sink.handler.received] == [["j\u00fcrgen@b\u00fccher.test"]]


@pytest.mark.parametrize("broken", ["454", "garbage"])
def test_failed_opportunistic_starttls_falls_back_to_plain_text(broken: str) -> None:
    """RFC 7435: an MX host whose TLS fails still gets the mail, in plain text, over a new connection."""
    sink = Sink(broken_starttls=broken).start()
    try:
        assert _send(sink, ["ok-1@remote.test"])["ok-1@remote.test"].ok
        with pytest.raises(smtp_client.HostUnusable):  # a relay configured for TLS gets nothing
            _send(sink, ["ok-2@remote.test"], starttls="required")
    finally:
        sink.stop()
    assert [r.rcpt_tos for r in sink.handler.received] == [["ok-1@remote.test"]]
