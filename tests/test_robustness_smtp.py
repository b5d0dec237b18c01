"""SMTP abuse and malformed MIME: nothing crashes, nothing accepted is lost, legitimate mail still flows.

Every malformed message must get either a 250 (and then be readable through the API without a
5xx) or a permanent 5xx; a 451 would mean the server failed on input it should have handled.
"""

from __future__ import annotations

import base64
import secrets
import smtplib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from conftest import Harness

DATA = Path(__file__).parent / "data"


def _headers(to: str, subject: str, extra: str = "") -> str:
    mid = f"<{secrets.token_hex(8)}@fuzz.example>"
    return f"From: Fuzz <fuzz@fuzz.example>\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: {mid}\r\n{extra}"


def malformed_corpus(to: str) -> Iterator[tuple[str, bytes]]:
    """(name, raw message) pairs, each broken in a different way."""
    h = _headers
    yield "no headers at all", b"just a body line\r\nand another\r\n"
    yield "header without colon", (h(to, "nocolon") + "This is not a header\r\n\r\nbody\r\n").encode()
    yield (
        "multipart without boundary",
        (h(to, "nob", "Content-Type: multipart/mixed\r\n") + "\r\n--x\r\n\r\nhi\r\n").encode(),
    )
    yield (
        "empty boundary",
        (h(to, "eb", 'Content-Type: multipart/mixed; boundary=""\r\n') + "\r\n--\r\n\r\n--\r\n").encode(),
    )
    yield (
        "boundary never closed",
        (
            h(to, "open", 'Content-Type: multipart/mixed; boundary="b1"\r\n')
            + "\r\n--b1\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
        ).encode(),
    )
    nested = "".join(f'Content-Type: multipart/mixed; boundary="n{i}"\r\n\r\n--n{i}\r\n' for i in range(80))
    yield "80 nested multiparts", (h(to, "deep") + nested + "\r\nleaf\r\n").encode()
    yield (
        "invalid base64",
        (
            h(to, "b64", "Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n")
            + "\r\n!!!not*base64***\r\n"
        ).encode(),
    )
    yield (
        "broken quoted-printable",
        (
            h(to, "qp", "Content-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n")
            + "\r\nbad =ZZ =\r\n=\r\n"
        ).encode(),
    )
    yield (
        "unknown charset",
        (h(to, "cs", "Content-Type: text/plain; charset=x-no-such-charset\r\n") + "\r\nhi\xe9\r\n").encode(
            "latin-1"
        ),
    )
    yield (
        "invalid utf-8 in headers",
        h(to, "raw").encode() + b"X-Bin: \xff\xfe\xc3\x28\r\nSubject: \xe9t\xe9\r\n\r\nbody\r\n",
    )
    yield "bad encoded-words", (h(to, "=?utf-8?B?###?= =?x-bad?Q?=ZZ?= =?utf-8?q?") + "\r\nbody\r\n").encode()
    yield "NUL bytes", h(to, "nul").encode() + b"\r\nbody\x00with\x00nul\r\n"
    yield "bare LF line endings", h(to, "lf").replace("\r\n", "\n").encode() + b"\nbody\nmore\n"
    yield (
        "60 KB folded header",
        (h(to, "long", "X-Long: " + "\r\n ".join(["a" * 70] * 800) + "\r\n") + "\r\nbody\r\n").encode(),
    )
    yield (
        "garbage addresses",
        (
            'From: <<<>>>\r\nTo: ;;;,,, <@>, "unterminated\r\nCc: =?utf-8?b?Zm9v?= <>\r\nReply-To: @@@\r\n'
            f"Message-ID: <{secrets.token_hex(6)}@x>\r\nSubject: addr\r\n\r\nbody\r\n"
        ).encode(),
    )
    yield (
        "unparsable date",
        (h(to, "date", "Date: yesterday-ish, 99 Foo 20260 25:61:61 +9999\r\n") + "\r\nbody\r\n").encode(),
    )
    yield (
        "weird message-id",
        (
            f"From: f@fuzz.example\r\nTo: {to}\r\nMessage-ID: no brackets / with spaces+\r\nSubject: mid\r\n\r\nb\r\n"
        ).encode(),
    )
    yield (
        "message-id 2000 chars",
        (
            f"From: f@fuzz.example\r\nTo: {to}\r\nMessage-ID: <{'m' * 900}@x>\r\nSubject: mid2\r\n\r\nb\r\n"
        ).encode(),
    )
    parts = "".join(
        f'--p\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename="f{i}.bin"\r\n'
        f"Content-Transfer-Encoding: base64\r\n\r\n{base64.b64encode(bytes([i % 256]) * 10).decode()}\r\n"
        for i in range(150)
    )
    yield (
        "150 attachments",
        (
            h(to, "many", 'Content-Type: multipart/mixed; boundary="p"\r\n') + "\r\n" + parts + "--p--\r\n"
        ).encode(),
    )
    yield (
        "attachment filename traversal",
        (
            h(to, "trav", 'Content-Type: multipart/mixed; boundary="t"\r\n')
            + '\r\n--t\r\nContent-Type: text/plain\r\n\r\nhi\r\n--t\r\nContent-Type: application/x-evil; name="../../etc/passwd"\r\n'
            'Content-Disposition: attachment; filename="../../../etc/passwd\x00.txt"\r\n\r\nroot\r\n--t--\r\n'
        ).encode(),
    )
    yield (
        "nested rfc822 garbage",
        (
            h(to, "rfc822", 'Content-Type: multipart/mixed; boundary="r"\r\n')
            + "\r\n--r\r\nContent-Type: message/rfc822\r\n\r\n\xff\xfe garbage that is not a message\r\n--r--\r\n"
        ).encode("latin-1"),
    )
    yield (
        "html only with script",
        (h(to, "html", "Content-Type: text/html\r\n") + "\r\n<script>alert(1)</script><p>x\r\n").encode(),
    )
    yield (
        "content-type garbage",
        (
            h(to, "ctg", "Content-Type: ;;;=;charset\r\nContent-Transfer-Encoding: x-nonsense\r\n")
            + "\r\nx\r\n"
        ).encode(),
    )
    yield (
        "uuencode",
        (
            h(to, "uu", "Content-Transfer-Encoding: x-uuencode\r\n")
            + "\r\nbegin 644 x\r\n#0V%T\r\n`\r\nend\r\n"
        ).encode(),
    )
    for path in sorted(DATA.glob("*.eml")):
        yield f"tests/data/{path.name}", path.read_bytes()


def smtp(harness: Harness, timeout: float = 30) -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", harness.server.smtp_port, timeout=timeout)


def send_legit(harness: Harness, to: str, subject: str) -> None:
    body = _headers(to, subject) + "\r\nlegitimate mail\r\n"
    with smtp(harness) as s:
        s.sendmail("legit@fuzz.example", [to], body.encode())


def wait_subject(http: httpx.Client, inbox: str, subject: str, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        resp = http.get(f"/v0/inboxes/{inbox}/messages", params={"limit": 100})
        assert resp.status_code == 200, resp.text
        if any(m.get("subject") == subject for m in resp.json()["messages"]):
            return True
        time.sleep(0.2)
    return False


@pytest.fixture
def inbox(harness: Harness) -> Iterator[tuple[str, httpx.Client]]:
    http = httpx.Client(
        base_url=harness.server.base_url, headers={"Authorization": f"Bearer {harness.api_key}"}, timeout=30
    )
    resp = http.post("/v0/inboxes", json={"username": harness.new_username()})
    resp.raise_for_status()
    yield resp.json()["inbox_id"], http
    http.close()


def test_malformed_mime_is_stored_or_refused_never_crashes(
    harness: Harness, inbox: tuple[str, httpx.Client]
) -> None:
    address, http = inbox
    outcomes: dict[str, int] = {}
    for name, raw in malformed_corpus(address):
        try:
            with smtp(harness) as s:
                s.sendmail("fuzz@fuzz.example", [address], raw)
            outcomes[name] = 250
        except smtplib.SMTPDataError as exc:
            outcomes[name] = exc.smtp_code
    temp_failures = {name: code for name, code in outcomes.items() if 400 <= code < 500}
    assert not temp_failures, f"the server failed (4xx) on: {temp_failures}"
    accepted = sum(code == 250 for code in outcomes.values())
    assert accepted == len(outcomes), outcomes  # broken mail is still mail: keep it

    token: str | None = None
    seen = 0
    while True:  # every stored message lists, reads and exports without a 5xx
        params: dict[str, str | int] = {"limit": 50, **({"page_token": token} if token else {})}
        page = http.get(f"/v0/inboxes/{address}/messages", params=params)
        assert page.status_code == 200, page.text
        for item in page.json()["messages"]:
            seen += 1
            path = f"/v0/inboxes/{address}/messages/{quote(item['message_id'], safe='@+/')}"
            for url in (path, path + "/raw", f"/v0/threads/{item['thread_id']}"):
                resp = http.get(url)
                assert resp.status_code < 500, f"{url}: {resp.status_code} {resp.text[:300]}"
        token = page.json().get("next_page_token")
        if not token:
            break
    assert seen >= accepted
    send_legit(harness, address, "after the corpus")
    assert wait_subject(http, address, "after the corpus")


def _raw_session(harness: Harness, lines: list[bytes]) -> list[bytes]:
    """Send raw command lines one by one; returns the replies (empty once the server hangs up)."""
    replies = []
    with socket.create_connection(("127.0.0.1", harness.server.smtp_port), timeout=10) as sock:
        f = sock.makefile("rb")
        replies.append(f.readline())
        for line in lines:
            try:
                sock.sendall(line)
                reply = f.readline()
                while reply[3:4] == b"-":  # multi-line reply
                    reply = f.readline()
            except OSError:
                break
            replies.append(reply)
            if not reply:
                break
    return replies


def test_garbage_commands_get_errors_and_server_keeps_serving(
    harness: Harness, inbox: tuple[str, httpx.Client]
) -> None:
    address, http = inbox
    replies = _raw_session(
        harness,
        [
            b"GARBAGE\r\n",
            b"MAIL FROM:<a@b>\r\n",  # before EHLO
            b"EHLO fuzz.example\r\n",
            b"RCPT TO:<x@y>\r\n",  # before MAIL
            b"DATA\r\n",  # before RCPT
            b"\x00\xff\xfe\x01\r\n",
            b"MAIL FROM:<" + b"a" * 5000 + b"@b>\r\n",
            b"MAIL FROM:<a@b> SIZE=99999999999999\r\n",
            b"MAIL FROM:<a@b> BOGUS=1\r\n",
            b"RCPT TO:<nobody-here@agentmx.localhost>\r\n",
            b"VRFY root\r\n",
            b"EXPN all\r\n",
            b"AUTH PLAIN AGZvbwBiYXI=\r\n",
            b"STARTTLS\r\n",
            b"BDAT 10 LAST\r\n",
            b"HELO\r\n",
            b"NOOP\r\n",
            b"QUIT\r\n",
        ],
    )
    assert replies[0].startswith(b"220")
    codes = [r[:3] for r in replies[1:] if r]
    assert codes[0].startswith(b"5"), replies  # GARBAGE
    assert codes[1].startswith(b"5"), replies  # MAIL before EHLO
    assert not any(c.startswith(b"2") for c in codes[3:5]), replies  # RCPT/DATA out of order
    assert not any(c == b"451" for c in codes), replies
    send_legit(harness, address, "after garbage")
    assert wait_subject(http, address, "after garbage")


def test_slow_client_idle_clients_and_mid_data_disconnects_do_not_block_mail(
    harness: Harness, inbox: tuple[str, httpx.Client]
) -> None:
    address, http = inbox
    stop = threading.Event()
    port = harness.server.smtp_port

    def dribble() -> None:  # a slow client: one byte every 50 ms
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.recv(1024)
            for byte in b"EHLO slow.example\r\nMAIL FROM:<slow@fuzz.example>\r\n" * 20:
                if stop.is_set():
                    return
                sock.sendall(bytes([byte]))
                time.sleep(0.05)

    slow = [threading.Thread(target=dribble, daemon=True) for _ in range(3)]
    for t in slow:
        t.start()
    idle = [
        socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(30)
    ]  # under the per-IP cap (50)
    try:
        for n in range(3):  # half a message, then the client vanishes
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                f = sock.makefile("rb")
                f.readline()
                for cmd in (
                    b"EHLO cut.example\r\n",
                    b"MAIL FROM:<cut@fuzz.example>\r\n",
                    f"RCPT TO:<{address}>\r\n".encode(),
                    b"DATA\r\n",
                ):
                    sock.sendall(cmd)
                    line = f.readline()
                    while line[3:4] == b"-":
                        line = f.readline()
                sock.sendall((_headers(address, f"cut off {n}") + "\r\nhalf a bo").encode())
        t0 = time.monotonic()
        send_legit(harness, address, "while abused")
        assert wait_subject(http, address, "while abused")
        assert time.monotonic() - t0 < 10
    finally:
        stop.set()
        for sock in idle:
            sock.close()
        for t in slow:
            t.join(timeout=5)
    subjects = {
        m.get("subject")
        for m in http.get(f"/v0/inboxes/{address}/messages", params={"limit": 100}).json()["messages"]
    }
    assert not any(s and s.startswith("cut off") for s in subjects), "a message cut off mid-DATA was stored"


def test_oversized_message_refused_then_mail_flows(harness: Harness, inbox: tuple[str, httpx.Client]) -> None:
    address, http = inbox
    big = (_headers(address, "too big") + "\r\n").encode() + b"x" * (10 * 1024 * 1024 + 10) + b"\r\n"
    with (
        pytest.raises(
            (smtplib.SMTPDataError, smtplib.SMTPSenderRefused, smtplib.SMTPServerDisconnected)
        ) as err,
        smtp(harness, timeout=60) as s,
    ):
        s.sendmail("big@fuzz.example", [address], big)
    if isinstance(err.value, (smtplib.SMTPDataError, smtplib.SMTPSenderRefused)):
        assert err.value.smtp_code == 552
    send_legit(harness, address, "after oversize")
    assert wait_subject(http, address, "after oversize")
