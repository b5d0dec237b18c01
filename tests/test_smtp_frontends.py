"""SMTP front-end processes (AGENTMX_SMTP_WORKERS): the same SMTP edge, served from another process.

Mail still gets its 250 only once stored, refusals are the server's, a front end that dies is
replaced, and front ends die with the server.
"""

from __future__ import annotations

import asyncio
import os
import signal
import smtplib
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import msgpack
import pytest
from agentmail import AgentMail
from agentmail.environment import AgentMailEnvironment

from agentmx.mail.parse import ParsedAttachment, ParsedMessage
from agentmx.settings import Settings, usable_cpus
from agentmx.smtp import link
from agentmx.testing.server import ServerProcess
from conftest import BACKENDS
from mail_support import download, make_message, smtp_send
from send_support import Sink, events_for, ext, new_inbox, relaying_server, wait_for

FRONT_END = "agentmx.smtp.frontend"


def front_ends(server: ServerProcess) -> list[int]:
    """Pids of the server's front-end processes."""
    assert server.proc is not None
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            status = (entry / "status").read_text()
        except OSError:
            continue
        ppid = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("PPid:"))
        if ppid == server.proc.pid and FRONT_END.encode() in cmdline:
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status


class Served:
    def __init__(self, server: ServerProcess, sink: Sink) -> None:
        self.server = server
        self.sink = sink
        env = AgentMailEnvironment(http=server.base_url, websockets=server.ws_url)
        self.client = AgentMail(api_key=server.create_key(), environment=env)


@pytest.fixture(scope="module", params=BACKENDS)
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp(f"frontends-{request.param}")
    with relaying_server(tmp, request.param, {"AGENTMX_SMTP_WORKERS": "1"}) as (server, sink):
        yield Served(server, sink)


def test_mail_is_stored_before_the_250(served: Served) -> None:
    assert len(front_ends(served.server)) == 1
    inbox = served.client.inboxes.create().inbox_id
    msg = make_message(
        inbox,
        subject="Through a front end",
        text="plain part",
        html="<p>html part</p>",
        attachments=[("notes.txt", "text/plain", b"attached bytes")],
    )
    smtp_send(served.server, [inbox], msg.as_bytes())
    listed = served.client.inboxes.messages.list(inbox)  # no waiting: the 250 came after the commit
    assert listed.count == 1
    got = served.client.inboxes.messages.get(inbox, msg["Message-ID"])
    assert got.subject == "Through a front end"
    assert got.text is not None and "plain part" in got.text
    assert got.html is not None and "html part" in got.html
    assert got.attachments is not None and [a.filename for a in got.attachments] == ["notes.txt"]
    raw = served.client.inboxes.messages.get_raw(inbox, msg["Message-ID"])
    stored = download(raw.download_url).content  # with the trace fields the front end wrote
    assert stored.startswith(b"Return-Path: <sender@example.com>\r\nReceived: from ")
    assert b"by agentmx.localhost (agentmx) with ESMTP" in stored
    assert stored.endswith(msg.as_bytes())
    thread = served.client.inboxes.threads.get(inbox, got.thread_id)
    assert thread.message_count == 1


def test_refusals_are_the_servers(served: Served) -> None:
    inbox = served.client.inboxes.create().inbox_id
    msg = make_message(inbox)
    refused = smtp_send(served.server, [inbox, "ghost@agentmx.localhost"], msg.as_bytes())
    assert refused["ghost@agentmx.localhost"][0] == 550
    assert served.client.inboxes.messages.list(inbox).count == 1
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        smtp_send(served.server, ["ghost@agentmx.localhost"], msg.as_bytes())
    big = msg.as_bytes() + b"y" * (10 * 1024 * 1024 + 10)
    with pytest.raises((smtplib.SMTPSenderRefused, smtplib.SMTPDataError)) as info:
        smtp_send(served.server, [inbox], big)
    assert info.value.smtp_code == 552


def test_a_deleted_inbox_is_refused_at_once(served: Served) -> None:
    """Front ends keep accepted recipients as the server's ingest cache does, and drop them with it."""

    def rcpt_code(inbox: str) -> int:
        with smtplib.SMTP("127.0.0.1", served.server.smtp_port, timeout=30) as smtp:
            smtp.ehlo()
            smtp.mail("sender@example.com")
            return int(smtp.rcpt(inbox)[0])

    # The front end keeps an answer for half the server's 2 s (RcptCache): a 550 is proof that the
    # server's clear reached it only if it came back within 1 s of the 250 the front end cached. Before,
    # the test allowed 1 s from the delete, after the entry had lapsed anyway. A loaded machine may not
    # fit a delete and a RCPT into that second: such a try proves nothing either way and is repeated.
    for _ in range(5):
        inbox = served.client.inboxes.create().inbox_id
        smtp_send(served.server, [inbox], make_message(inbox).as_bytes())
        time.sleep(1.2)  # that answer has lapsed in the front end: the next one is cached afresh
        cached = time.monotonic()  # before the RCPT whose 250 the front end caches
        assert rcpt_code(inbox) == 250
        served.client.inboxes.delete(inbox)
        while (code := rcpt_code(inbox)) == 250 and time.monotonic() < cached + 1.0:
            time.sleep(0.02)
        if code == 550 and time.monotonic() < cached + 1.0:
            return  # refused while the cached 250 was still fresh: the clear reached the front end
        if code == 250:
            continue  # still cached when the second ended: a slow machine, or the clear never came
        assert code == 550
    pytest.fail("in five tries, no 550 came back while the front end's cached 250 was still fresh")


def test_a_message_too_big_for_the_link_with_its_parse_goes_without_it(served: Served) -> None:
    """Latin-1 text doubles in UTF-8, and text and extracted text both travel: the server parses it."""
    inbox = served.client.inboxes.create().inbox_id
    before = front_ends(served.server)
    body = b"\xe9" * 76 + b"\r\n"
    raw = (
        f"From: a@example.com\r\nTo: {inbox}\r\nSubject: big latin-1\r\nMessage-ID: <big@example.com>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\n"
    ).encode() + body * (9 * 1024 * 1024 // len(body))
    smtp_send(served.server, [inbox], raw)
    got = served.client.inboxes.messages.get(inbox, "<big@example.com>")
    assert got.subject == "big latin-1"
    assert front_ends(served.server) == before  # the same process: the link was not broken


def test_concurrent_sessions_all_stored(served: Served) -> None:
    inbox = served.client.inboxes.create().inbox_id
    messages = [make_message(inbox, subject=f"burst {i}") for i in range(40)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda m: smtp_send(served.server, [inbox], m.as_bytes()), messages))
    stored = {m.message_id for m in served.client.inboxes.messages.list(inbox, limit=100).messages}
    assert stored == {m["Message-ID"] for m in messages}


def test_dsn_to_a_return_path_is_consumed(served: Served) -> None:
    client = served.client
    a = new_inbox(client)
    to = ext("later-")
    sent = client.inboxes.messages.send(a, to=to, text="accepted, then bounced")
    got = wait_for(lambda: served.sink.handler.for_rcpt(to))[0]
    wait_for(lambda: "delivered" in client.inboxes.messages.get(a, sent.message_id).labels)
    dsn = (
        f"From: MAILER-DAEMON@relay.example\r\nTo: {got.mail_from}\r\nSubject: Undelivered\r\n"
        'MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary="B1"\r\n'
        "\r\n--B1\r\nContent-Type: text/plain\r\n\r\nfailed\r\n"
        "\r\n--B1\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; relay.example\r\n\r\n"
        f"Final-Recipient: rfc822; {to}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        "\r\n--B1\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"Message-ID: {sent.message_id}\r\n\r\n--B1--\r\n"
    ).encode()
    with smtplib.SMTP("127.0.0.1", served.server.smtp_port, timeout=30) as smtp:
        smtp.sendmail("", [got.mail_from], dsn)
    wait_for(lambda: "bounced" in client.inboxes.messages.get(a, sent.message_id).labels)
    assert events_for(served.server, "message.bounced", "bounce", sent.message_id)


def _client(server: ServerProcess) -> AgentMail:
    env = AgentMailEnvironment(http=server.base_url, websockets=server.ws_url)
    return AgentMail(api_key=server.create_key(), environment=env)


def _runs_uvloop(pid: int) -> bool:
    return "/uvloop/" in Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_front_ends_run_on_the_event_loop_asked_for(
    fresh_server: Callable[..., ServerProcess], loop: str
) -> None:
    env = {"AGENTMX_SMTP_WORKERS": "1", "AGENTMX_SMTP_FRONTEND_LOOP": loop}
    server = fresh_server("sqlite", env=env).start()
    (pid,) = front_ends(server)
    assert _runs_uvloop(pid) is (loop == "uvloop")
    inbox = _client(server).inboxes.create().inbox_id
    smtp_send(server, [inbox], make_message(inbox).as_bytes())
    assert _client(server).inboxes.messages.list(inbox).count == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_auto_starts_one_front_end_with_two_usable_cpus(
    fresh_server: Callable[..., ServerProcess], backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AGENTMX_SMTP_WORKERS", raising=False)
    assert Settings().smtp_workers == "auto"  # the default
    server = fresh_server(backend, env={"AGENTMX_SMTP_WORKERS": "auto"}).start()
    expected = 1 if usable_cpus() >= 2 else 0
    assert len(front_ends(server)) == expected
    inbox = _client(server).inboxes.create().inbox_id
    smtp_send(server, [inbox], make_message(inbox).as_bytes())
    assert _client(server).inboxes.messages.list(inbox).count == 1


def test_auto_on_one_cpu_serves_smtp_in_process(fresh_server: Callable[..., ServerProcess]) -> None:
    ours = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(ours)})  # the server inherits it
    try:
        server = fresh_server("sqlite", env={"AGENTMX_SMTP_WORKERS": "auto"}).start()
    finally:
        os.sched_setaffinity(0, ours)
    assert front_ends(server) == []
    inbox = _client(server).inboxes.create().inbox_id
    smtp_send(server, [inbox], make_message(inbox).as_bytes())
    assert _client(server).inboxes.messages.list(inbox).count == 1


def test_a_missing_uvloop_asked_for_is_named_at_start(
    fresh_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    hidden = tmp_path / "hide" / "uvloop"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('uvloop hidden by the test')\n")
    env = {
        "AGENTMX_SMTP_WORKERS": "1",
        "AGENTMX_SMTP_FRONTEND_LOOP": "uvloop",
        "PYTHONPATH": str(hidden.parent),
    }
    with pytest.raises(
        RuntimeError, match="AGENTMX_SMTP_FRONTEND_LOOP=uvloop, but uvloop cannot be imported"
    ):
        fresh_server("sqlite", env=env).start(timeout=30)


def test_a_front_end_that_dies_is_replaced(fresh_server: Callable[..., ServerProcess]) -> None:
    server = fresh_server("sqlite", env={"AGENTMX_SMTP_WORKERS": "1"}).start()
    inbox = _client(server).inboxes.create().inbox_id
    (first,) = front_ends(server)
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: front_ends(server) and front_ends(server) != [first], timeout=15)
    msg = make_message(inbox)
    smtp_send(server, [inbox], msg.as_bytes())
    assert _client(server).inboxes.messages.list(inbox).count == 1


def test_a_stop_sent_to_every_process_restarts_nothing(fresh_server: Callable[..., ServerProcess]) -> None:
    """systemctl stop signals the whole cgroup: the front end exits first, and is not started again."""
    server = fresh_server("sqlite", env={"AGENTMX_SMTP_WORKERS": "1"}).start()
    (front,) = front_ends(server)
    assert server.proc is not None
    os.kill(front, signal.SIGTERM)
    time.sleep(0.3)  # the front end is gone before the server hears of it
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=15) == 0
    assert "starting it again" not in server.log()


def test_a_front_end_stopped_alone_is_replaced(fresh_server: Callable[..., ServerProcess]) -> None:
    server = fresh_server("sqlite", env={"AGENTMX_SMTP_WORKERS": "1"}).start()
    inbox = _client(server).inboxes.create().inbox_id
    (first,) = front_ends(server)
    os.kill(first, signal.SIGTERM)  # a clean exit the server did not ask for: back after a short wait
    wait_for(lambda: front_ends(server) and front_ends(server) != [first], timeout=15)
    smtp_send(server, [inbox], make_message(inbox).as_bytes())
    assert _client(server).inboxes.messages.list(inbox).count == 1


def test_a_stop_during_a_restart_starts_nothing(fresh_server: Callable[..., ServerProcess]) -> None:
    server = fresh_server("sqlite", env={"AGENTMX_SMTP_WORKERS": "1"}).start()
    (first,) = front_ends(server)
    os.kill(first, signal.SIGKILL)
    (second,) = wait_for(lambda: [p for p in front_ends(server) if p != first], timeout=15)
    os.kill(second, signal.SIGKILL)  # a second death in a row: restarted after a 1 s pause
    time.sleep(0.2)
    assert server.proc is not None
    pid = server.proc.pid
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 5
    assert server.proc.returncode == 0
    orphans = [
        entry.name
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit()
        and FRONT_END.encode() in _read(entry / "cmdline")
        and str(pid).encode() in _read(entry / "cmdline")
    ]
    assert orphans == []


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def test_front_ends_die_with_the_server(fresh_server: Callable[..., ServerProcess]) -> None:
    server = fresh_server("sqlite", env={"AGENTMX_SMTP_WORKERS": "2"}).start()
    client = _client(server)
    inbox = client.inboxes.create().inbox_id
    pids = front_ends(server)
    assert len(pids) == 2
    acked = []
    smtp = smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30)
    for i in range(20):
        msg = make_message(inbox, subject=f"custody {i}")
        smtp.sendmail("sender@example.com", [inbox], msg.as_bytes())
        acked.append(msg["Message-ID"])
    server.kill()  # right after the last 250
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in pids)
    with pytest.raises(smtplib.SMTPServerDisconnected):  # the open session went with them
        smtp.noop()
        smtp.noop()
    smtp.close()
    server.start()  # the same ports: nothing of the old server holds them
    stored = {m.message_id for m in _client(server).inboxes.messages.list(inbox, limit=100).messages}
    assert set(acked) <= stored


def _read_frame(frame: bytes) -> tuple[object, ...]:
    async def read() -> tuple[object, ...]:
        reader = asyncio.StreamReader()
        reader.feed_data(frame)
        reader.feed_eof()
        return await link.read(reader, max_frame=1 << 20)

    return asyncio.run(read())


def _framed(body: bytes) -> bytes:
    return link.HEADER.pack(len(body)) + body


def test_the_link_reads_plain_data_only() -> None:
    # A pickle (the link's first format): even one naming no class could make the reader allocate
    # gigabytes (LONG_BINPUT with a large memo index).
    with pytest.raises(link.LinkClosed, match="unreadable"):
        _read_frame(_framed(b"\x80\x04r\x00\x00\x00\x01."))
    with pytest.raises(link.LinkClosed, match="ext type"):
        _read_frame(_framed(msgpack.packb(["rcpt", 1, msgpack.ExtType(5, b"x")])))
    with pytest.raises(link.LinkClosed, match="unreadable"):  # an array longer than the frame
        _read_frame(_framed(b"\xdd\xff\xff\xff\xff"))
    with pytest.raises(link.LinkClosed, match="limit"):
        _read_frame(link.HEADER.pack(2 << 20) + b"x")
    with pytest.raises(link.LinkClosed, match="unreadable"):
        _read_frame(_framed(msgpack.packb({"not": "an array"})))
    assert _read_frame(link.encode(("rcpt", 1, "a@b.example", 0))) == ("rcpt", 1, "a@b.example", 0)


def test_the_link_carries_a_parse_whole() -> None:
    parsed = ParsedMessage(
        from_="Ann <ann@example.com>",
        to=["b@example.com"],
        subject="Hi",
        date=datetime(2026, 11, 30, 6, 0, 1, 5, tzinfo=timezone(timedelta(hours=-5))),
        headers={"Subject": "Hi", "X-Raw": "caf\udce9"},  # a lone surrogate from undecodable 8-bit bytes
        text="body",
        attachments=[ParsedAttachment("a.pdf", "application/pdf", "attachment", None, b"%PDF\x00")],
        size=42,
    )
    prepared = link.Prepared(["b@example.com"], b"Received: x\r\n", parsed)
    # Arrays come back as tuples (the peer stays a tuple); the parse's list fields are lists again.
    frame = ("data", 7, b"raw", "a@example.com", ("b@example.com",), "helo", ("::1", 25, 0, 0), prepared)
    got = _read_frame(link.encode(frame))
    assert got == frame
    assert isinstance(got[-1], link.Prepared) and got[-1].rcpt_tos == ["b@example.com"]
    assert got[-1].parsed.to == ["b@example.com"] and got[-1].parsed.references == []
    reply = (7, link.RcptReply("250 OK", return_path=True))
    assert _read_frame(link.encode(reply)) == reply


def test_an_extract_that_is_its_body_stripped_is_not_sent_twice() -> None:
    body = "Hello there.\n" * 300 + "\n"
    plain = ParsedMessage(text=body, extracted_text=body.strip(), html="<p>x</p>", extracted_html="<p>y</p>")
    quoting = ParsedMessage(text=body, extracted_text="Hello there.")
    empty = ParsedMessage(text=" \n", extracted_text="", extracted_html=None)
    for parsed in (plain, quoting, empty):
        frame = ("data", 1, b"raw", "a@example.com", ("b@example.com",), "helo", ("::1", 25, 0, 0))
        frame += (link.Prepared(["b@example.com"], b"", parsed),)
        encoded = link.encode(frame)
        assert _read_frame(encoded) == frame
    assert len(link.encode(("data", 1, link.Prepared([], b"", plain)))) < 1.1 * len(body)
