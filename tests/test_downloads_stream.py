"""Downloads of bytes kept as files are sent a chunk at a time as the client reads.

Each download was read whole and handed to the transport as one body: 50 clients that asked for a
9 MB attachment and stopped reading held about 400 MB in the server until they went away.
"""

from __future__ import annotations

import base64
import hashlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from agentmail import AgentMail
from agentmail.environment import AgentMailEnvironment

from agentmx.testing.server import ServerProcess
from mail_support import SlowGet, make_message, smtp_send

BIG = os.urandom(4 * 1024 * 1024)  # kept as a file (over the 64 KiB kept in the database)


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _big_attachment_link(server: ServerProcess) -> tuple[AgentMail, str, str]:
    """A client, an inbox, and the download link of a draft's attachment of BIG."""
    env = AgentMailEnvironment(http=server.base_url, websockets=server.ws_url)
    client = AgentMail(api_key=server.create_key(), environment=env)
    inbox = client.inboxes.create().inbox_id
    draft = client.inboxes.drafts.create(
        inbox, subject="Big", attachments=[{"filename": "big.bin", "content": base64.b64encode(BIG).decode()}]
    )
    (attachment,) = draft.attachments or []
    url = client.inboxes.drafts.get_attachment(inbox, draft.draft_id, attachment.attachment_id).download_url
    return client, inbox, url


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the server's RSS from /proc")
def test_readers_that_stop_reading_hold_little_of_what_they_asked_for(
    fresh_server: Callable[..., ServerProcess],
) -> None:
    server = fresh_server().start()
    client, inbox, _ = _big_attachment_link(server)
    # A raw message near the 10 MB limit: more than the kernel's socket buffers take off the server's
    # hands (a few MB on loopback), as a larger one over the internet.
    msg = make_message(
        inbox, attachments=[("big.bin", "application/octet-stream", os.urandom(7 * 1024 * 1024))]
    )
    raw = msg.as_bytes()
    smtp_send(server, [inbox], raw)
    message_id = client.inboxes.messages.list(inbox).messages[0].message_id
    url = client.inboxes.messages.get_raw(inbox, message_id).download_url
    assert httpx.get(url, timeout=30).content.endswith(raw)  # warmed up: a route's first use costs memory too
    assert server.proc is not None
    before = _rss_bytes(server.proc.pid)
    readers = [SlowGet(url) for _ in range(20)]  # each has its response head: its body is on its way
    try:
        size = int(readers[0].headers["content-length"])
        assert all(r.status == 200 and r.headers["content-length"] == str(size) for r in readers)
        held = _rss_bytes(server.proc.pid) - before
        # Whole bodies held more than the 190 MB asked for (each body, and the part of it the socket did
        # not take, copied into the transport's buffer); chunks hold a few MB. A quarter is far from both.
        assert held < 20 * size // 4, f"{held / 1e6:.0f} MB held by 20 readers of {size / 1e6:.1f} MB"
        assert readers[0].read_rest().endswith(raw)  # and one that reads on gets every byte
    finally:
        for r in readers:
            r.close()


def test_a_slow_reader_gets_every_byte_and_head_the_size(fresh_server: Callable[..., ServerProcess]) -> None:
    server = fresh_server().start()
    client, inbox, url = _big_attachment_link(server)
    slow = SlowGet(url, receive_buffer=32 * 1024)
    assert slow.status == 200
    assert slow.headers["content-type"] == "application/octet-stream"
    assert slow.headers["content-disposition"] == "attachment; filename*=UTF-8''big.bin"
    assert slow.headers["x-content-type-options"] == "nosniff"
    assert slow.headers["content-length"] == str(len(BIG))
    assert slow.read_rest(pause=0.001) == BIG
    head = httpx.head(url, timeout=30)
    assert head.status_code == 200 and head.headers["content-length"] == str(len(BIG)) and head.content == b""
    # A raw message over 64 KiB is a file too.
    msg = make_message(inbox, attachments=[("a.bin", "application/octet-stream", BIG[:100_000])])
    smtp_send(server, [inbox], msg.as_bytes())
    message_id = client.inboxes.messages.list(inbox).messages[0].message_id
    raw = httpx.get(client.inboxes.messages.get_raw(inbox, message_id).download_url, timeout=30)
    assert raw.status_code == 200 and raw.content.endswith(msg.as_bytes())
    assert raw.headers["content-length"] == str(len(raw.content))
    assert raw.headers["content-type"] == "message/rfc822"


def test_a_blob_that_cannot_be_opened_is_a_503_not_a_500(fresh_server: Callable[..., ServerProcess]) -> None:
    """Out of descriptors or a failing disk (here: a folder where the file was): retry later, no traceback."""
    server = fresh_server().start()
    _, _, url = _big_attachment_link(server)
    key = hashlib.sha256(BIG).hexdigest()
    path = server.data_dir / "blobs" / key[:2] / key[2:4] / key
    path.unlink()
    path.mkdir()
    found = httpx.get(url, timeout=30)
    assert found.status_code == 503 and found.json()["name"] == "ServiceUnavailableError"
    assert "Traceback" not in server.log()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the server's I/O counters from /proc")
def test_head_of_a_download_does_not_read_the_file(fresh_server: Callable[..., ServerProcess]) -> None:
    """HEAD reaches the app as GET (http/head.py): the download read its whole file for a body that
    uvicorn then dropped, as long as the client kept the connection open (most clients do)."""
    server = fresh_server().start()
    _, _, url = _big_attachment_link(server)
    assert server.proc is not None
    io = Path(f"/proc/{server.proc.pid}/io")

    def bytes_read() -> int:
        return next(int(line.split()[1]) for line in io.read_text().splitlines() if line.startswith("rchar"))

    with httpx.Client(timeout=30) as http:  # keep-alive: the server sees no disconnect
        before = bytes_read()
        head = http.head(url)
        assert head.status_code == 200 and head.headers["content-length"] == str(len(BIG))
        time.sleep(1.0)  # time to read the file, if it does
        read = bytes_read() - before
    assert read < len(BIG) // 4, f"HEAD read {read} bytes of a {len(BIG)}-byte file"


def test_a_reader_that_stops_reading_is_reset_after_the_send_timeout(
    fresh_server: Callable[..., ServerProcess],
) -> None:
    """Writes paused (the client's window closed) for AGENTMX_HTTP_SEND_TIMEOUT reset the connection:
    without it the connection, its chunk and its open file stayed until the client went away."""
    server = fresh_server(env={"AGENTMX_HTTP_SEND_TIMEOUT": "2"}).start()
    client, inbox, _ = _big_attachment_link(server)
    # More than the kernel's buffers on both sides take (a few MB on loopback): the server's writes pause.
    raw = make_message(
        inbox, attachments=[("big.bin", "application/octet-stream", os.urandom(7 * 1024 * 1024))]
    ).as_bytes()
    smtp_send(server, [inbox], raw)
    message_id = client.inboxes.messages.list(inbox).messages[0].message_id
    url = client.inboxes.messages.get_raw(inbox, message_id).download_url
    stalled = SlowGet(url)
    size = int(stalled.headers["content-length"])
    time.sleep(4.5)  # the timeout, the sweep's second, and room
    received = len(stalled.body)
    try:
        while chunk := stalled.sock.recv(64 * 1024):
            received += len(chunk)
    except ConnectionResetError:
        pass
    finally:
        stalled.close()
    assert received < size, "the server was still sending to a reader that had stopped for 4.5 s"
    # Others are served as before, a slow reader included (its writes resume before the timeout).
    assert httpx.get(url, timeout=30).content.endswith(raw)
    slow = SlowGet(url, receive_buffer=32 * 1024)
    assert slow.read_rest(pause=0.001).endswith(raw)
