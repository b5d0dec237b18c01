"""SMTP submission (AGENTMX_SUBMISSION_PORT): agents send with an SMTP client, as through the send API.

STARTTLS before AUTH (538), AUTH with the inbox address and an API key, MAIL FROM and From must be
the inbox; the message is stored (label sent), delivered locally and to the relay, Bcc kept out of
the headers, and a retry of the same Message-ID is sent once.
"""

from __future__ import annotations

import re
import secrets
import smtplib
import ssl
import threading
import time
from collections.abc import Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from agentmail import AgentMail
from agentmail.environment import AgentMailEnvironment

from agentmx.testing.certs import unverified_client_context, write_self_signed
from agentmx.testing.server import ServerProcess, free_port
from conftest import BACKENDS, run_agentmx
from mail_support import download
from send_support import Sink, ext, relaying_server, wait_for


class Served:
    def __init__(self, server: ServerProcess, sink: Sink, port: int, implicit_port: int, certs: Path) -> None:
        self.server, self.sink, self.port, self.implicit_port = server, sink, port, implicit_port
        self.certs = certs
        self.key = server.create_key()
        env = AgentMailEnvironment(http=server.base_url, websockets=server.ws_url)
        self.client = AgentMail(api_key=self.key, environment=env)

    def session(self, login: tuple[str, str] | None = None) -> smtplib.SMTP:
        smtp = smtplib.SMTP("127.0.0.1", self.port, timeout=30, local_hostname="agent.example")
        smtp.starttls(context=unverified_client_context())
        if login is not None:
            smtp.login(*login)
        return smtp


@pytest.fixture(scope="module", params=BACKENDS)
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp(f"submission-{request.param}")
    write_self_signed(tmp)
    port, implicit_port = free_port(), free_port()
    env = {
        "AGENTMX_SMTP_TLS_CERT": str(tmp / "cert.pem"),
        "AGENTMX_SMTP_TLS_KEY": str(tmp / "key.pem"),
        "AGENTMX_SUBMISSION_PORT": str(port),
        "AGENTMX_SUBMISSIONS_PORT": str(implicit_port),
    }
    with relaying_server(tmp / "data", request.param, env) as (server, sink):
        yield Served(server, sink, port, implicit_port, tmp)


def message(sender: str, to: str, subject: str, cc: str | None = None) -> EmailMessage:
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = f"Agent <{sender}>"
    msg["To"] = to
    if cc:
        msg["Cc"] = cc
    msg["Subject"] = subject
    msg.set_content(f"{subject}: sent over SMTP")
    return msg


def test_auth_needs_starttls_and_a_key_that_may_send_from_the_inbox(served: Served) -> None:
    client = served.client
    inbox, other = client.inboxes.create().inbox_id, client.inboxes.create().inbox_id
    with smtplib.SMTP("127.0.0.1", served.port, timeout=30) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("starttls") and not smtp.has_extn("auth")
        assert smtp.docmd("AUTH", "PLAIN AGluYm94AGtleQ==")[0] == 538
        assert smtp.docmd("MAIL", f"FROM:<{inbox}>")[0] == 530
    other_key = client.inboxes.api_keys.create(other, request={"name": "other"}).api_key
    no_send = client.inboxes.api_keys.create(
        inbox, request={"name": "read", "permissions": {"message_read": True}}
    ).api_key
    for login in (
        (inbox, "am_wrong"),
        (inbox, other_key),
        (inbox, no_send),
        ("ghost@agentmx.localhost", served.key),
    ):
        with served.session() as smtp, pytest.raises(smtplib.SMTPAuthenticationError) as info:
            smtp.login(*login)
        assert info.value.smtp_code == 535
    own = client.inboxes.api_keys.create(inbox, request={"name": "send"})
    with served.session((inbox, own.api_key)) as smtp:  # AUTH PLAIN (smtplib's first choice)
        assert smtp.noop()[0] == 250
        client.inboxes.api_keys.delete(inbox, own.api_key_id)  # checked again for each message
        to = ext()
        with pytest.raises(smtplib.SMTPDataError) as info:
            smtp.sendmail(inbox, [to], message(inbox, to, "After revocation").as_bytes())
        assert info.value.smtp_code == 535
    with served.session() as smtp:
        smtp.ehlo()
        smtp.esmtp_features["auth"] = "LOGIN"
        smtp.login(inbox, served.key)  # an organization key works for any inbox


def test_submission_offers_enhanced_status_codes(served: Served) -> None:
    """RFC 2034 on 587 and 465, before and after STARTTLS; every reply after EHLO carries a code."""
    inbox = served.client.inboxes.create().inbox_id
    with smtplib.SMTP("127.0.0.1", served.port, timeout=30) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("enhancedstatuscodes")
        assert smtp.docmd("AUTH", "PLAIN AGluYm94AGtleQ==")[1].startswith(b"5.7.11 ")
        assert smtp.docmd("MAIL", f"FROM:<{inbox}>") == (530, b"5.7.0 Authentication required")
        assert smtp.starttls(context=unverified_client_context()) == (220, b"2.0.0 Ready to start TLS")
        smtp.ehlo()
        assert smtp.has_extn("enhancedstatuscodes") and smtp.has_extn("auth")
        with pytest.raises(smtplib.SMTPAuthenticationError) as info:
            smtp.login(inbox, "am_wrong")
        assert info.value.smtp_error == b"5.7.8 Authentication credentials invalid"
    context = unverified_client_context()
    with smtplib.SMTP_SSL("127.0.0.1", served.implicit_port, timeout=30, context=context) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("enhancedstatuscodes")
        assert smtp.login(inbox, served.key) == (235, b"2.7.0 Authentication successful")
        to = ext()
        replies = [
            smtp.mail("someone@else.example"),
            smtp.mail(inbox),
            smtp.rcpt("nodomain"),
            smtp.rcpt(to),
            smtp.data(message(inbox, to, "Coded").as_bytes()),
            smtp.quit(),
        ]
    firsts = [(code, text.split()[0]) for code, text in replies]
    assert firsts == [
        (553, b"5.7.1"),
        (250, b"2.1.0"),
        (553, b"5.1.3"),
        (250, b"2.1.5"),
        (250, b"2.0.0"),
        (221, b"2.0.0"),
    ]


def test_a_submitted_message_is_sent_as_the_api_sends(served: Served) -> None:
    client = served.client
    inbox, local = client.inboxes.create().inbox_id, client.inboxes.create().inbox_id
    remote, hidden = ext("to-"), ext("bcc-")
    msg = message(inbox, remote, "Quarterly figures", cc=local)
    msg["Bcc"] = hidden  # a client may leave it in: it must not travel
    # Fields a later hop writes: they would be read as this server's verdict and return path.
    msg["Return-Path"] = "<someone@else.example>"
    msg["Authentication-Results"] = "agentmx.localhost; dkim=pass; spf=pass; dmarc=pass"
    with served.session((inbox, served.key)) as smtp:
        refused = smtp.sendmail(inbox, [remote, local, hidden], msg.as_bytes())
    assert refused == {}

    got = wait_for(lambda: served.sink.handler.for_rcpt(remote))[0]
    assert wait_for(lambda: served.sink.handler.for_rcpt(hidden))
    delivered = got.message
    assert delivered["Subject"] == "Quarterly figures" and delivered["Message-ID"] and delivered["Date"]
    assert delivered["Bcc"] is None and hidden not in got.raw.decode()
    assert delivered["Return-Path"] is None and delivered["Authentication-Results"] is None
    assert got.mail_from.startswith("bounces+")  # the return path the API's sends use
    received = got.raw[: got.raw.index(b"\r\nMessage-ID: ")].decode()  # on top, then what was added
    assert received.startswith("Received: from agent.example\r\n\t(using TLSv1.3 with cipher ")
    assert "(agentmx) with ESMTPSA;" in received
    assert "127.0.0.1" not in got.raw.decode()  # where the agent runs is nobody's business

    sent = client.inboxes.messages.list(inbox).messages
    assert [m.subject for m in sent] == ["Quarterly figures"]
    stored = client.inboxes.messages.get(inbox, sent[0].message_id)
    assert "sent" in stored.labels and stored.bcc == [hidden]
    assert stored.message_id == delivered["Message-ID"]
    received = wait_for(lambda: client.inboxes.messages.list(local).messages)
    assert received[0].message_id == stored.message_id
    headers = client.inboxes.messages.get(local, received[0].message_id).headers or {}
    assert "Authentication-Results" not in headers and "Return-Path" not in headers


# Headers a client may send with odd line ends ({local}, {remote}, {hidden} filled in): a bare CR
# ends a line for Python's parser (the stored copy's), which also ends the header at its first line
# that is no field; a reader that ends it only at an empty line must not find the Bcc either.
ODD_HEADERS = {
    "bare CR": "From: {inbox}\r\nTo: {remote}\r\nCc: {local}\r\nSubject: bare CR\rBcc: {hidden}\r"
    "Message-ID: <{token}@client.example>\r\n\r\nbody\r\n",
    "bare LF": "From: {inbox}\nTo: {remote}\nCc: {local}\nBcc: {hidden}\nSubject: bare LF\n\nbody\n",
    "no empty line": "From: {inbox}\r\nTo: {remote}\r\nCc: {local}\r\nSubject: no empty line\r\n"
    "not a field\rBcc: {hidden}\r\nMessage-ID: <{token}@body.example>\r\n\r\nbody\r\n",
}


def _header_shows(raw: bytes, hidden: str) -> list[str]:
    """Where ``raw``'s header names ``hidden`` or has a Bcc, to Python's parser (one Message-ID
    expected) or to a reader whose header ends at the first empty line (CRLF, or any line end)."""
    found = []
    parsed = message_from_bytes(raw, policy=policy.default)
    if parsed["Bcc"] is not None or any(hidden in str(value) for value in parsed.values()):
        found.append("parser")
    if len(parsed.get_all("Message-ID") or []) != 1:
        found.append(f"Message-IDs: {parsed.get_all('Message-ID')}")
    if hidden.encode() in raw.split(b"\r\n\r\n", 1)[0]:
        found.append("CRLF reader")
    if hidden.encode() in re.split(rb"(?:\r\n|\r|\n){2}", raw, maxsplit=1)[0]:
        found.append("any line end reader")
    return found


@pytest.mark.parametrize("variant", ODD_HEADERS)
def test_a_bcc_after_odd_line_ends_does_not_travel(served: Served, variant: str) -> None:
    client = served.client
    inbox, local = client.inboxes.create().inbox_id, client.inboxes.create().inbox_id
    remote, hidden = ext("to-"), ext("bcc-")
    fields = {
        "inbox": inbox,
        "local": local,
        "remote": remote,
        "hidden": hidden,
        "token": secrets.token_hex(8),
    }
    raw = ODD_HEADERS[variant].format(**fields).encode()
    with served.session((inbox, served.key)) as smtp:
        assert smtp.sendmail(inbox, [remote, local, hidden], raw) == {}

    for address in (remote, hidden):
        got = wait_for(partial(served.sink.handler.for_rcpt, address))[0]
        assert _header_shows(got.raw, hidden) == [], (address, got.raw)
    stored = wait_for(lambda: client.inboxes.messages.list(local).messages)[0]
    copy = client.inboxes.messages.get(local, stored.message_id)
    assert not copy.bcc and hidden not in str(copy.headers)
    stored_raw = download(client.inboxes.messages.get_raw(local, stored.message_id).download_url).content
    assert _header_shows(stored_raw, hidden) == [], stored_raw
    sent = client.inboxes.messages.list(inbox).messages[0]
    assert client.inboxes.messages.get(inbox, sent.message_id).bcc == [hidden]  # the sender's copy keeps it


def test_a_submitted_8bit_message_is_sent_as_8bit(served: Served) -> None:
    """8-bit data goes out declared (BODY=8BITMIME, RFC 6152), as the client declared it to us."""
    inbox = served.client.inboxes.create().inbox_id
    plain, accented = ext("plain-"), ext("accented-")
    with served.session((inbox, served.key)) as smtp:
        smtp.sendmail(inbox, [plain], message(inbox, plain, "ascii").as_bytes())
        body = b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nh\xc3\xa9llo\r\n"
        raw = f"From: {inbox}\r\nTo: {accented}\r\nSubject: 8bit\r\n".encode() + body
        smtp.sendmail(inbox, [accented], raw, mail_options=["BODY=8BITMIME"])
    got = wait_for(lambda: served.sink.handler.for_rcpt(accented))[0]
    assert got.raw.endswith(b"h\xc3\xa9llo\r\n") and got.mail_options == ["BODY=8BITMIME"]
    assert wait_for(lambda: served.sink.handler.for_rcpt(plain))[0].mail_options == []


def test_a_submitted_reply_joins_the_thread(served: Served) -> None:
    client = served.client
    inbox = client.inboxes.create().inbox_id
    question = message("alice@example.org", inbox, "Question")
    question["Message-ID"] = f"<{secrets.token_hex(8)}@example.org>"
    with smtplib.SMTP("127.0.0.1", served.server.smtp_port, timeout=30) as smtp:  # inbound
        smtp.sendmail("alice@example.org", [inbox], question.as_bytes())
    answer = message(inbox, "alice@example.org", "Re: Question")
    answer["In-Reply-To"] = question["Message-ID"]
    with served.session((inbox, served.key)) as smtp:
        smtp.sendmail(inbox, ["alice@example.org"], answer.as_bytes())
    listed = client.inboxes.messages.list(inbox).messages
    assert {m.subject for m in listed} == {"Question", "Re: Question"}
    assert len({m.thread_id for m in listed}) == 1


def test_a_submitted_message_joins_the_replies_that_came_before_it(served: Served) -> None:
    """Replies to a message, stored before it (sent elsewhere first, then submitted here): its sent
    copy joins their thread in the sending inbox, and its local delivery joins theirs in the other."""
    client = served.client
    inbox, local = client.inboxes.create().inbox_id, client.inboxes.create().inbox_id
    original_id = f"<{secrets.token_hex(8)}@example.org>"
    reply = message("bob@example.org", f"{inbox}, {local}", "Re: Plans")
    reply["Message-ID"] = f"<{secrets.token_hex(8)}@example.org>"
    reply["In-Reply-To"] = original_id
    with smtplib.SMTP("127.0.0.1", served.server.smtp_port, timeout=30) as smtp:  # inbound, to both
        smtp.sendmail("bob@example.org", [inbox, local], reply.as_bytes())
    original = message(inbox, local, "Plans")
    original["Message-ID"] = original_id
    with served.session((inbox, served.key)) as smtp:
        smtp.sendmail(inbox, [local], original.as_bytes())

    def both(where: str) -> list[Any] | None:
        listed = client.inboxes.messages.list(where).messages
        return listed if len(listed) == 2 else None

    for where in (inbox, local):  # the local copy is delivered in the background
        listed = wait_for(partial(both, where))
        assert {m.subject for m in listed} == {"Plans", "Re: Plans"}
        assert len({m.thread_id for m in listed}) == 1
        thread = client.inboxes.threads.get(where, listed[0].thread_id)
        assert thread.message_count == 2 and thread.last_message_id == original_id


def test_implicit_tls_from_the_first_byte(served: Served) -> None:
    """AGENTMX_SUBMISSIONS_PORT (465): AUTH at once, no STARTTLS; a renewed certificate is served too."""
    client = served.client
    inbox = client.inboxes.create().inbox_id
    to = ext()
    tls = unverified_client_context()
    with smtplib.SMTP_SSL("127.0.0.1", served.implicit_port, timeout=30, context=tls) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("auth") and smtp.has_extn("pipelining") and not smtp.has_extn("starttls")
        smtp.login(inbox, served.key)
        smtp.sendmail(inbox, [to], message(inbox, to, "Over 465").as_bytes())
    assert wait_for(lambda: served.sink.handler.for_rcpt(to))[0].message["Subject"] == "Over 465"

    renewed = write_self_signed(served.certs)

    def served_certificate() -> bytes | None:
        with smtplib.SMTP_SSL("127.0.0.1", served.implicit_port, timeout=30, context=tls) as smtp:
            assert isinstance(smtp.sock, ssl.SSLSocket)
            return smtp.sock.getpeercert(binary_form=True)

    assert wait_for(lambda: served_certificate() == renewed, timeout=10)


def test_the_sender_must_be_the_inbox(served: Served) -> None:
    client = served.client
    inbox = client.inboxes.create().inbox_id
    with served.session((inbox, served.key)) as smtp:
        assert smtp.docmd("MAIL", "FROM:<someone@else.example>")[0] == 553
        smtp.rset()
        msg = message("someone@else.example", ext(), "Spoofed")
        with pytest.raises(smtplib.SMTPDataError) as info:
            smtp.sendmail(inbox, [ext()], msg.as_bytes())
        assert info.value.smtp_code == 550
        assert b"From field must be the inbox address" in info.value.smtp_error
        # The inbox first, somebody else as well: recipients would see both as senders.
        plain = message(inbox, ext(), "Also from").as_bytes()
        for extra in (
            b"From: ceo@bank.example\r\n",
            b"Sender: ceo@bank.example\r\n",
            b"Resent-From: ceo@bank.example\r\n",
        ):
            smtp.rset()
            with pytest.raises(smtplib.SMTPDataError) as info:
                smtp.sendmail(inbox, [ext()], extra + plain)
            assert info.value.smtp_code == 550, extra
        smtp.rset()
        both = plain.replace(
            f"From: Agent <{inbox}>".encode(), f"From: Agent <{inbox}>, ceo@bank.example".encode()
        )
        with pytest.raises(smtplib.SMTPDataError):
            smtp.sendmail(inbox, [ext()], both)
        # Comments nested past the address parser's recursion limit (folded lines): it was a 451,
        # retried by the client for ever.
        nested = "\r\n ".join(["(" * 400] * 8 + [")" * 400] * 8).encode()
        own_from = f"From: Agent <{inbox}>\r\n".encode()
        for field in (b"From: ", b"Sender: "):
            smtp.rset()
            hostile = field + inbox.encode() + b" " + nested + b"\r\n"
            with pytest.raises(smtplib.SMTPDataError) as info:
                smtp.sendmail(
                    inbox,
                    [ext()],
                    plain.replace(own_from, hostile if field == b"From: " else own_from + hostile),
                )
            assert info.value.smtp_code == 550, field
    assert client.inboxes.messages.list(inbox).count == 0


def test_recipients_are_capped_and_refusals_are_the_send_apis(served: Served) -> None:
    client = served.client
    inbox = client.inboxes.create().inbox_id
    with served.session((inbox, served.key)) as smtp:
        smtp.ehlo()
        assert smtp.mail(inbox)[0] == 250
        codes = [smtp.rcpt(ext())[0] for _ in range(51)]
        assert codes == [250] * 50 + [452]
        smtp.rset()
        bounced = "bounce-" + ext()  # the relay refuses it: suppressed afterwards
        smtp.sendmail(inbox, [bounced], message(inbox, bounced, "First").as_bytes())
    wait_for(lambda: "bounced" in client.inboxes.messages.list(inbox).messages[0].labels)
    with served.session((inbox, served.key)) as smtp, pytest.raises(smtplib.SMTPDataError) as info:
        smtp.sendmail(inbox, [bounced], message(inbox, bounced, "Again").as_bytes())
    assert info.value.smtp_code == 550 and bounced.encode() in info.value.smtp_error  # the reason


def test_a_submitted_recipients_local_part_keeps_its_case(served: Served) -> None:
    """RFC 5321 2.4: the envelope's local parts go on as the client wrote them; a recipient is still
    one address in any case (To, Bcc, this server's inboxes, suppression)."""
    client = served.client
    inbox, local = client.inboxes.create().inbox_id, client.inboxes.create().inbox_id
    name = f"Carol.Jones-{secrets.token_hex(3)}"
    rcpt, wire = f"{name}@Remote.Test", f"{name}@remote.test"
    dead = f"Bounce-{name}@remote.test"  # the relay refuses it
    msg = message(inbox, wire.lower(), "Case kept", cc=local)
    with served.session((inbox, served.key)) as smtp:
        assert smtp.sendmail(inbox, [rcpt, wire.upper(), local.upper(), dead], msg.as_bytes()) == {}
    got = wait_for(lambda: served.sink.handler.for_rcpt(wire))
    assert [c.rcpt_tos for c in got] == [[wire]]
    sent = wait_for(lambda: client.inboxes.messages.list(inbox).messages)[0]
    wait_for(lambda: "bounced" in client.inboxes.messages.get(inbox, sent.message_id).labels)
    stored = client.inboxes.messages.get(inbox, sent.message_id)
    assert stored.bcc == [dead]  # the To field named the other one, in another case
    assert [m.message_id for m in wait_for(lambda: client.inboxes.messages.list(local).messages)] == [
        sent.message_id
    ]
    with served.session((inbox, served.key)) as smtp, pytest.raises(smtplib.SMTPDataError) as info:
        smtp.sendmail(inbox, [dead.lower()], message(inbox, dead.lower(), "Again").as_bytes())
    assert info.value.smtp_code == 550


def test_a_recipient_that_cannot_be_sent_to_is_refused_at_rcpt(served: Served) -> None:
    """Accepted with 250, such a recipient was dropped at DATA: the client believed it sent."""
    client = served.client
    inbox = client.inboxes.create().inbox_id
    to = ext()
    with served.session((inbox, served.key)) as smtp:
        smtp.ehlo()
        assert smtp.mail(inbox)[0] == 250
        for bad in ("nodomain", "a b@remote.test", "user@-bad-.test"):
            assert smtp.rcpt(bad)[0] == 553, bad
        assert smtp.rcpt(to)[0] == 250
        assert smtp.data(message(inbox, to, "Good one").as_bytes())[0] == 250
    sent = client.inboxes.messages.list(inbox).messages
    assert [(m.to, m.bcc) for m in sent] == [([to], None)]


def test_a_retried_submission_is_sent_once(served: Served) -> None:
    client = served.client
    inbox = client.inboxes.create().inbox_id
    to = ext()
    msg = message(inbox, to, "Retried")
    msg["Message-ID"] = f"<{secrets.token_hex(8)}@client.example>"
    for _ in range(2):  # as a client does when the first 250 was lost
        with served.session((inbox, served.key)) as smtp:
            smtp.sendmail(inbox, [to], msg.as_bytes())
    wait_for(lambda: served.sink.handler.for_rcpt(to))
    time.sleep(1.0)  # room for a second delivery, if one had been queued
    assert len(served.sink.handler.for_rcpt(to)) == 1
    assert client.inboxes.messages.list(inbox).count == 1


def test_a_retry_with_an_unreadable_message_id_is_sent_once(served: Served) -> None:
    """Such a message is stored under an id derived from its content; the retry looked for the one
    it gave, and was queued again (sent twice) or refused with 451."""
    client = served.client
    inbox = client.inboxes.create().inbox_id
    to = ext()
    raw = (
        f"From: {inbox}\r\nTo: {to}\r\nSubject: Unreadable id\r\nMessage-ID: <not an id@client.example>\r\n"
        "Date: Tue, 01 Dec 2026 00:00:00 +0000\r\n\r\nSent twice?\r\n"
    ).encode()
    for _ in range(2):
        with served.session((inbox, served.key)) as smtp:
            assert smtp.sendmail(inbox, [to], raw) == {}
    wait_for(lambda: served.sink.handler.for_rcpt(to))
    time.sleep(1.0)  # room for a second delivery, if one had been queued
    assert len(served.sink.handler.for_rcpt(to)) == 1
    assert client.inboxes.messages.list(inbox).count == 1


def test_submission_needs_a_certificate(tmp_path: Path) -> None:
    env = {"AGENTMX_SUBMISSION_PORT": str(free_port())}
    out = run_agentmx("db", "upgrade", "--data-dir", str(tmp_path), env=env)
    assert out.returncode == 2
    assert "AGENTMX_SUBMISSION_PORT needs AGENTMX_SMTP_TLS_CERT" in out.stderr


def test_a_huge_header_is_read_off_the_event_loop(served: Served) -> None:
    # 9 MB of short fields: completing the header and reading its originators took 9 s of CPU, on the
    # event loop, which served no API request for 6-11 s meanwhile. In a thread, the loop keeps serving.
    client = served.client
    inbox = client.inboxes.create().inbox_id
    raw = (
        f"From: {inbox}\r\nTo: {ext('big-')}\r\n".encode()
        + b"a:b\r\n" * (9 * 1024 * 1024 // 5)
        + b"\r\nhi\r\n"
    )
    waits: list[float] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            began = time.monotonic()
            client.inboxes.get(inbox)
            waits.append(time.monotonic() - began)
            time.sleep(0.02)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        with served.session((inbox, served.key)) as smtp:
            smtp.sock.settimeout(180)  # parsing the message takes a while still (~8 s of CPU)
            assert smtp.sendmail(inbox, [ext("big-")], raw) == {}
    finally:
        done.set()
        poller.join()
    assert max(waits) < 4.0, sorted(waits)[-5:]  # its regexes hold the GIL a while still
