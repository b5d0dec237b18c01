"""The hop limit (AGENTMX_SMTP_HOP_LIMIT, RFC 5321 6.3): mail with more Received fields than the limit,
this server's own included, is in a loop; it is refused after DATA with 554 5.4.6 and not stored.

Inbound SMTP in the server process and through a front end, and SMTP submission. Local delivery
between inboxes adds no trace field: a submitted message reaches the other inbox with the Received
fields it was submitted with.
"""

from __future__ import annotations

import random
import smtplib
import tracemalloc
from collections.abc import Iterator
from email import message_from_bytes, policy

import pytest
from agentmail import AgentMail
from agentmail.environment import AgentMailEnvironment

from agentmx.services.hop_limit import hops
from agentmx.testing.certs import unverified_client_context, write_self_signed
from agentmx.testing.server import ServerProcess, free_port
from conftest import BACKENDS
from mail_support import download, make_message, smtp_send
from send_support import Sink, ext, relaying_server, wait_for

LIMIT = 50  # the default


class Served:
    def __init__(self, server: ServerProcess, sink: Sink, submission_port: int) -> None:
        self.server = server
        self.sink = sink
        self.submission_port = submission_port
        self.key = server.create_key()
        env = AgentMailEnvironment(http=server.base_url, websockets=server.ws_url)
        self.client = AgentMail(api_key=self.key, environment=env)

    def submit(self, inbox: str, rcpts: list[str], raw: bytes) -> None:
        with smtplib.SMTP(
            "127.0.0.1", self.submission_port, timeout=30, local_hostname="agent.example"
        ) as smtp:
            smtp.starttls(context=unverified_client_context())
            smtp.login(inbox, self.key)
            smtp.sendmail(inbox, rcpts, raw)


@pytest.fixture(
    scope="module",
    params=[(backend, workers) for backend in BACKENDS for workers in ("0", "1")],
    ids=lambda p: f"{p[0]}-workers{p[1]}",
)
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    backend, workers = request.param
    tmp = tmp_path_factory.mktemp(f"hops-{backend}-{workers}")
    write_self_signed(tmp)
    port = free_port()
    env = {
        "AGENTMX_SMTP_WORKERS": workers,
        "AGENTMX_SMTP_TLS_CERT": str(tmp / "cert.pem"),
        "AGENTMX_SMTP_TLS_KEY": str(tmp / "key.pem"),
        "AGENTMX_SUBMISSION_PORT": str(port),
    }
    with relaying_server(tmp / "data", backend, env) as (server, sink):
        yield Served(server, sink, port)


def with_hops(count: int, raw: bytes, eols: tuple[bytes, ...] = (b"\r\n",)) -> bytes:
    """``raw`` with ``count`` Received fields on top (folded, as relays write them), their lines
    ended by ``eols`` in turn."""
    lines: list[bytes] = []
    for i in range(count):
        lines += [
            b"Received: from relay%d.example ([192.0.2.%d])" % (i, i % 250 + 1),
            b"\tby mx.example with ESMTP;",
            b"\tMon, 1 Dec 2025 10:00:00 +0000",
        ]
    return b"".join(line + eols[n % len(eols)] for n, line in enumerate(lines)) + raw


def subjects(client: AgentMail, inbox: str) -> list[str | None]:
    return [m.subject for m in client.inboxes.messages.list(inbox).messages]


def test_inbound_mail_past_the_hop_limit_is_refused_and_not_stored(served: Served) -> None:
    inbox = served.client.inboxes.create().inbox_id
    # With the Received this server adds, LIMIT - 1 from the client is exactly the limit.
    taken = with_hops(LIMIT - 1, make_message(inbox, subject="within the limit").as_bytes())
    assert smtp_send(served.server, [inbox], taken) == {}
    looping = with_hops(LIMIT, make_message(inbox, subject="in a loop").as_bytes())
    with pytest.raises(smtplib.SMTPDataError) as refused:
        smtp_send(served.server, [inbox], looping)
    assert refused.value.smtp_code == 554
    assert refused.value.smtp_error.startswith(b"5.4.6 ")
    # A 250 comes only after the commit, so the list is final.
    assert subjects(served.client, inbox) == ["within the limit"]


def test_received_fields_ended_by_a_bare_cr_count_as_the_parser_reads_them(served: Served) -> None:
    """The stored message's parser ends a line at a bare CR too: a loop through relays that write
    CR-only line ends does not slip past the limit."""
    inbox = served.client.inboxes.create().inbox_id
    looping = with_hops(LIMIT, make_message(inbox, subject="in a CR loop").as_bytes(), (b"\r",))
    with pytest.raises(smtplib.SMTPDataError) as refused:
        smtp_send(served.server, [inbox], looping)
    assert refused.value.smtp_code == 554 and refused.value.smtp_error.startswith(b"5.4.6 ")
    assert subjects(served.client, inbox) == []


def test_received_lines_after_a_bare_cr_empty_line_are_body_and_not_counted(served: Served) -> None:
    """The header ends at its first empty line, a bare CR as much as a CRLF: Received lines after
    it are body text, whatever line ends follow."""
    inbox = served.client.inboxes.create().inbox_id
    head = f"From: sender@example.com\r\nTo: {inbox}\r\nSubject: quoted trace\r\n".encode()
    body = b"Received: from relay.example by mx.example; Mon, 1 Dec 2025 10:00:00 +0000\r\n" * (LIMIT + 1)
    assert smtp_send(served.server, [inbox], head + b"\r" + body) == {}
    assert subjects(served.client, inbox) == ["quoted trace"]


def test_a_submitted_message_past_the_hop_limit_is_refused(served: Served) -> None:
    client = served.client
    sender, other = client.inboxes.create().inbox_id, client.inboxes.create().inbox_id
    looping = make_message(other, subject="resubmitted in a loop", sender=sender).as_bytes()
    with pytest.raises(smtplib.SMTPDataError) as refused:
        served.submit(sender, [other], with_hops(LIMIT, looping))
    assert refused.value.smtp_code == 554 and refused.value.smtp_error.startswith(b"5.4.6 ")
    assert subjects(client, sender) == []  # no sent copy

    # At the limit it is sent, and local delivery adds no trace field of its own.
    taken = make_message(other, subject="within the limit", sender=sender).as_bytes()
    served.submit(sender, [other], with_hops(LIMIT - 1, taken))
    arrived = wait_for(lambda: client.inboxes.messages.list(other).messages)
    assert [m.subject for m in arrived] == ["within the limit"]
    raw = download(client.inboxes.messages.get_raw(other, arrived[0].message_id).download_url).content
    head = raw[: raw.index(b"\r\n\r\n")]
    assert head.count(b"\r\nReceived: ") + head.startswith(b"Received: ") == LIMIT


def test_a_submitted_message_with_mixed_line_ends_past_the_limit_is_refused(served: Served) -> None:
    """Half the fields begin after a bare CR; CRLF often enough for submission's line limit."""
    client = served.client
    sender, other = client.inboxes.create().inbox_id, client.inboxes.create().inbox_id
    looping = make_message(other, subject="resubmitted in a CR loop", sender=sender).as_bytes()
    with pytest.raises(smtplib.SMTPDataError) as refused:
        served.submit(sender, [other], with_hops(LIMIT, looping, (b"\r", b"\r\n")))
    assert refused.value.smtp_code == 554 and refused.value.smtp_error.startswith(b"5.4.6 ")


# Header and body lines of every kind the parser tells apart, and every line end it knows (and
# some it does not: \x0b, \x0c and \x1c end a line for str.splitlines, not for the parser).
_LINES = [
    b"Received: from a by b",
    b"RECEIVED:x",
    b"received :spaced name",
    b" continued",
    b"\tReceived: continued",
    b"From someone",
    b": no name",
    b"X-Other: value",
    b"a line that is no field",
    b"",
    b"Received: \xff8-bit",
]
_ENDS = [b"\r\n", b"\r", b"\n", b"\n\r", b"\x0b", b"\x0c", b"\x1c"]


def test_the_count_is_the_parsers_count_whatever_the_line_ends() -> None:
    rng = random.Random(20261203)
    for _ in range(5000):
        raw = b"".join(rng.choice(_LINES) + rng.choice(_ENDS) for _ in range(rng.randint(0, 12)))
        parsed = message_from_bytes(raw, policy=policy.default)
        assert hops(raw) == len(parsed.get_all("received") or []), raw


def _bounce(return_path: str, recipient: str, message_id: str) -> bytes:
    """A delivery report (RFC 3464) for ``recipient`` of the message, to its return path."""
    return (
        f"From: MAILER-DAEMON@relay.example\r\nTo: {return_path}\r\nSubject: Undelivered\r\n"
        'MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary="B1"\r\n'
        "\r\n--B1\r\nContent-Type: text/plain\r\n\r\nfailed\r\n"
        "\r\n--B1\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; relay.example\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        "\r\n--B1\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"Message-ID: {message_id}\r\n\r\n--B1--\r\n"
    ).encode()


def test_a_looping_bounce_to_a_return_path_is_refused_as_a_loop(served: Served) -> None:
    """A bounce going round a loop is refused as any looping mail is, and records no bounce."""
    client = served.client
    inbox, to = client.inboxes.create().inbox_id, ext("loop-")
    sent = client.inboxes.messages.send(inbox, to=to, text="accepted, then bounced in a loop")
    return_path = wait_for(lambda: served.sink.handler.for_rcpt(to))[0].mail_from
    wait_for(lambda: "delivered" in client.inboxes.messages.get(inbox, sent.message_id).labels)
    with pytest.raises(smtplib.SMTPDataError) as refused:
        smtp_send(
            served.server, [return_path], with_hops(LIMIT, _bounce(return_path, to, sent.message_id)), ""
        )
    assert refused.value.smtp_code == 554 and refused.value.smtp_error.startswith(b"5.4.6 "), refused.value
    # The report is read before the reply: refused, it recorded nothing.
    assert "bounced" not in client.inboxes.messages.get(inbox, sent.message_id).labels
    assert all(e.entry != to for e in client.lists.list("send", "block").entries)


def test_a_looping_submission_is_refused_as_a_loop_before_other_refusals(served: Served) -> None:
    client = served.client
    sender, other = client.inboxes.create().inbox_id, client.inboxes.create().inbox_id
    client.inboxes.update(sender, status="paused")  # refused anyway (550), but the loop is what to stop
    looping = with_hops(LIMIT, make_message(other, subject="paused and looping", sender=sender).as_bytes())
    with pytest.raises(smtplib.SMTPDataError) as refused:
        served.submit(sender, [other], looping)
    assert refused.value.smtp_code == 554 and refused.value.smtp_error.startswith(b"5.4.6 "), refused.value
    with pytest.raises(smtplib.SMTPDataError) as paused:
        served.submit(sender, [other], make_message(other, subject="paused", sender=sender).as_bytes())
    assert paused.value.smtp_code == 550


def test_a_header_of_many_short_lines_is_counted_in_little_memory() -> None:
    """The count runs on the event loop, before any other check: a 10 MB header of short fields (a
    message as large as the default size limit takes) once took about 1 GB and 1 s to read, the
    regex keeping a backtracking record for every line."""
    raw = b"Received: x\n" + b"a:\n" * (10 * 1024 * 1024 // 3) + b"\n"
    tracemalloc.start()
    try:
        assert hops(raw) == 1
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * len(raw), f"{peak / 2**20:.0f} MB to count the Received fields of a 10 MB header"
