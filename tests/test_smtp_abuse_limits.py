"""The SMTP listener's defences found by bench/smtp_abuse.py: bounded DATA, stress timeouts, fd budget.

* A body sent as one endless line (no CRLF) used to be held whole in RAM by aiosmtpd and answered
  500; it must get 552 with the server's RSS flat.
* While more than half of AGENTMX_SMTP_MAX_CONNECTIONS are open, connections idle past
  AGENTMX_SMTP_STRESS_TIMEOUT are closed with 421 4.4.2 (below that, they are left alone).
* The connection cap shrinks to fit a hard open-file limit instead of failing accept() with EMFILE.
* At the cap, a client from a quiet IP displaces the most idle connection of the most crowded IP.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable
from email.policy import SMTP
from pathlib import Path

import httpx
import pytest

from agentmx.testing.server import ServerProcess
from conftest import BACKENDS, Harness
from mail_support import make_message, smtp_send


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _reply(f: object) -> bytes:
    line = f.readline()  # type: ignore[attr-defined]
    while line[3:4] == b"-":
        line = f.readline()  # type: ignore[attr-defined]
    return bytes(line)


def _open_session(port: int, *commands: bytes) -> tuple[socket.socket, object]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    f = sock.makefile("rb")
    assert _reply(f).startswith(b"220")
    for cmd in commands:
        sock.sendall(cmd + b"\r\n")
        _reply(f)
    return sock, f


def _in_data(port: int, inbox: str) -> tuple[socket.socket, object]:
    """A session that has just been told 354: what follows is the message body."""
    sock, f = _open_session(
        port, b"EHLO big.example", b"MAIL FROM:<big@example.com>", f"RCPT TO:<{inbox}>".encode()
    )
    sock.sendall(b"DATA\r\n")
    assert _reply(f).startswith(b"354")
    return sock, f


def _new_inbox(harness: Harness) -> str:
    headers = {"Authorization": f"Bearer {harness.api_key}"}
    resp = httpx.post(
        harness.server.base_url + "/v0/inboxes", json={"username": harness.new_username()}, headers=headers
    )
    return str(resp.json()["inbox_id"])


def test_endless_line_over_the_size_limit_gets_552_with_flat_rss(harness: Harness) -> None:
    assert harness.server.proc is not None
    pid = harness.server.proc.pid
    inbox = _new_inbox(harness)
    sock, f = _in_data(harness.server.smtp_port, inbox)
    with sock:
        before = _rss_kb(pid)
        chunk = b"y" * 65536
        for _ in range(64 * 1024 * 1024 // len(chunk)):  # 64 MB, no CRLF: 6x the 10 MB limit
            sock.sendall(chunk)
        grown_mb = (_rss_kb(pid) - before) / 1024
        sock.sendall(b"\r\n.\r\n")
        assert _reply(f).startswith(b"552 ")
        sock.sendall(b"QUIT\r\n")
    assert grown_mb < 24, f"server RSS grew {grown_mb:.0f} MB while a 64 MB line was dropped"
    smtp_send(harness.server, [inbox], make_message(inbox, subject="after the endless line").as_bytes())


def test_over_long_line_within_the_size_limit_is_taken(harness: Harness) -> None:
    """Lines over RFC 5321's 1000 octets are stored as Postfix stores them (test_smtp_session.py)."""
    inbox = _new_inbox(harness)
    sock, f = _in_data(harness.server.smtp_port, inbox)
    with sock:
        sock.sendall(b"Subject: long\r\n\r\n" + b"z" * 5000 + b"\r\nshort line\r\n.\r\n")
        assert _reply(f).startswith(b"250 ")
        sock.sendall(b"NOOP\r\n")  # the session goes on
        assert _reply(f).startswith(b"250")


def test_dot_stuffing_and_size_accounting_keep_the_body_intact(harness: Harness) -> None:
    inbox = _new_inbox(harness)
    body = "line one\r\n.leading dot\r\n..two dots\r\n"
    raw = make_message(inbox, subject="dots", text=body).as_bytes()
    smtp_send(harness.server, [inbox], raw)  # smtplib dot-stuffs; the server must unstuff
    headers = {"Authorization": f"Bearer {harness.api_key}"}
    with httpx.Client(base_url=harness.server.base_url, headers=headers, timeout=30) as http:
        messages = http.get(f"/v0/inboxes/{inbox}/messages").json()["messages"]
        got = http.get(f"/v0/inboxes/{inbox}/messages/{messages[0]['message_id']}").json()
    assert ".leading dot" in got["text"]
    assert "..two dots" in got["text"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_stress_mode_closes_idle_connections_only_past_half_the_cap(
    backend: str, fresh_server: Callable[..., ServerProcess]
) -> None:
    env = {
        "AGENTMX_SMTP_MAX_CONNECTIONS": "20",
        "AGENTMX_SMTP_MAX_CONNECTIONS_PER_IP": "100",
        "AGENTMX_SMTP_STRESS_TIMEOUT": "1",
    }
    server = fresh_server(backend, env=env).start()
    port = server.smtp_port
    calm = [_open_session(port, b"EHLO calm.example") for _ in range(5)]
    time.sleep(3)  # 5 of 20: no stress, the 300 s timeout applies
    for sock, f in calm:
        sock.sendall(b"NOOP\r\n")
        assert _reply(f).startswith(b"250")
    crowd = [_open_session(port, b"EHLO idle.example") for _ in range(10)]  # 15 of 20: stress
    # One burst of commands makes all 15 idle from the same moment. Otherwise a reaper pass falling
    # between the oldest and the newest closes only the old ones, and the rest (10, no longer over
    # half the cap) are left alone, as they should be.
    for sock, _ in calm + crowd:
        sock.sendall(b"NOOP\r\n")
    for _, f in calm + crowd:
        assert _reply(f).startswith(b"250")
    deadline = time.monotonic() + 10
    closed = 0
    for sock, f in calm + crowd:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        if _reply(f).startswith(b"421 4.4.2") and sock.recv(1) == b"":
            closed += 1
        sock.close()
    assert closed == 15
    key = server.create_key()
    inbox = httpx.post(
        server.base_url + "/v0/inboxes",
        json={"username": "afterstress"},
        headers={"Authorization": f"Bearer {key}"},
    ).json()["inbox_id"]
    smtp_send(server, [inbox], make_message(inbox, subject="after stress").as_bytes())


def _caps_under_rlimit(soft: int, hard: int) -> tuple[int, int, int]:
    code = (
        "import resource\n"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard}))\n"
        "from agentmx.fd_budget import connection_caps\n"
        "smtp, http = connection_caps(2000, 6000)\n"
        "print(smtp, http, resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    smtp, http, soft_after = out.stdout.split()
    return int(smtp), int(http), int(soft_after)


def test_connection_caps_fit_the_open_file_limit() -> None:
    assert _caps_under_rlimit(912, 912) == (100, 300, 912)  # 912 fds less a reserve of 512, shared 1:3
    assert _caps_under_rlimit(1024, 16384) == (2000, 6000, 8512)  # the soft limit is raised instead


@pytest.mark.parametrize("backend", BACKENDS)
def test_at_the_cap_a_client_from_a_quiet_ip_displaces_the_crowded_ip(
    backend: str, fresh_server: Callable[..., ServerProcess]
) -> None:
    env = {
        "AGENTMX_SMTP_MAX_CONNECTIONS": "10",
        "AGENTMX_SMTP_MAX_CONNECTIONS_PER_IP": "100",
        "AGENTMX_SMTP_STRESS_TIMEOUT": "300",  # keep the reaper out of this test
    }
    server = fresh_server(backend, env=env).start()
    port = server.smtp_port

    def connect(source: str) -> tuple[socket.socket, object]:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
        return sock, sock.makefile("rb")

    crowd = [connect("127.0.0.2") for _ in range(10)]  # the whole cap from one address
    for _, f in crowd:
        assert _reply(f).startswith(b"220")
    quiet, quiet_f = connect("127.0.0.1")
    assert _reply(quiet_f).startswith(b"220")  # served: a crowd connection made room
    displaced = 0
    for sock, f in crowd:
        sock.settimeout(0.5)
        try:
            displaced += _reply(f).startswith(b"421 4.7.0")
        except TimeoutError:
            pass
    assert displaced == 1
    extra, extra_f = connect("127.0.0.2")  # the crowded address gains nothing by reconnecting
    assert _reply(extra_f).startswith(b"421 4.7.0")
    key = server.create_key()
    inbox = httpx.post(
        server.base_url + "/v0/inboxes",
        json={"username": "quiet"},
        headers={"Authorization": f"Bearer {key}"},
    ).json()["inbox_id"]
    smtp_send(server, [inbox], make_message(inbox, subject="from the quiet address").as_bytes())
    for sock, _ in [*crowd, (quiet, quiet_f), (extra, extra_f)]:
        sock.close()


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_address_harvesting_is_cut_off_after_20_refused_recipients(harness: Harness) -> None:
    domain = _new_inbox(harness).split("@", 1)[1]
    sock, f = _open_session(harness.server.smtp_port, b"EHLO harvest.example", b"MAIL FROM:<h@example.com>")
    with sock:
        for n in range(19):
            sock.sendall(f"RCPT TO:<guess{n}@{domain}>\r\n".encode())
            assert _reply(f).startswith(b"550 ")
        sock.sendall(f"RCPT TO:<guess19@{domain}>\r\n".encode())
        assert _reply(f).startswith(b"550 ")  # the 20th error is answered, then the session ends
        assert _reply(f).startswith(b"421 4.7.0 Error: too many errors")
        assert _closed(sock)


def _deliver_after_refusals(sock: socket.socket, f: object, inbox: str, refused: int, tag: str) -> None:
    """One transaction: ``refused`` unknown recipients (each a 550), then ``inbox``, then a message (250)."""
    domain = inbox.split("@", 1)[1]
    sock.sendall(b"MAIL FROM:<sender@example.com>\r\n")
    assert _reply(f).startswith(b"250")
    for n in range(refused):
        sock.sendall(f"RCPT TO:<{tag}{n}@{domain}>\r\n".encode())
        assert _reply(f).startswith(b"550 ")
    for command in (f"RCPT TO:<{inbox}>".encode(), b"DATA"):
        sock.sendall(command + b"\r\n")
        assert _reply(f)[:1] in (b"2", b"3")
    sock.sendall(make_message(inbox, subject=tag).as_bytes(policy=SMTP) + b".\r\n")
    assert _reply(f).startswith(b"250")


def test_a_sender_below_the_error_limit_still_delivers(harness: Harness) -> None:
    inbox = _new_inbox(harness)
    sock, f = _open_session(harness.server.smtp_port, b"EHLO mixed.example")
    with sock:
        _deliver_after_refusals(sock, f, inbox, 19, "gone")


def test_the_error_count_starts_again_after_a_delivered_message(harness: Harness) -> None:
    """A relay on a long session with a few stale addresses per message is never cut off."""
    inbox = _new_inbox(harness)
    sock, f = _open_session(harness.server.smtp_port, b"EHLO relay.example")
    with sock:
        for round_ in range(3):  # 45 refused recipients in all, 15 between deliveries
            _deliver_after_refusals(sock, f, inbox, 15, f"stale{round_}-")


def test_junk_commands_are_cut_off_after_100(harness: Harness) -> None:
    sock, f = _open_session(harness.server.smtp_port, b"EHLO noop.example")
    with sock:
        sock.sendall(b"NOOP\r\n" * 100)
        for _ in range(100):
            assert _reply(f).startswith(b"250")
        sock.sendall(b"NOOP\r\n")
        assert _reply(f).startswith(b"421 4.7.0 Error: too many commands without mail")
        assert _closed(sock)
