"""The inbound SMTP edge: size limit, partial recipients, label permissions, custody across SIGKILL."""

from __future__ import annotations

import hashlib
import smtplib
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from agentmail import AgentMail
from agentmail.core.api_error import ApiError
from agentmail.environment import AgentMailEnvironment
from agentmail.inboxes.types import CreateInboxRequest

from agentmx.testing.server import ServerProcess
from conftest import BACKENDS, NO_RETRY, Harness
from mail_support import download, make_message, smtp_send
from send_support import wait_for


def test_oversize_message_552(harness: Harness) -> None:
    inbox = harness.client().inboxes.create()
    big = make_message(inbox.inbox_id, text="x" * 100).as_bytes() + b"y" * (10 * 1024 * 1024 + 10)
    with pytest.raises((smtplib.SMTPSenderRefused, smtplib.SMTPDataError)) as info:
        smtp_send(harness.server, [inbox.inbox_id], big)
    assert info.value.smtp_code == 552
    assert harness.client().inboxes.messages.list(inbox.inbox_id).count == 0


def test_unknown_recipient_refused_others_delivered(harness: Harness) -> None:
    client = harness.client()
    inbox = client.inboxes.create()
    msg = make_message(inbox.inbox_id)
    refused = smtp_send(harness.server, [inbox.inbox_id, "ghost@agentmx.localhost"], msg.as_bytes())
    assert refused["ghost@agentmx.localhost"][0] == 550
    assert client.inboxes.messages.list(inbox.inbox_id).count == 1


def test_message_without_message_id_gets_one(harness: Harness) -> None:
    client = harness.client()
    inbox = client.inboxes.create()
    raw = f"From: a@example.com\r\nTo: {inbox.inbox_id}\r\nSubject: no id\r\n\r\nbody\r\n".encode()
    smtp_send(harness.server, [inbox.inbox_id], raw)
    smtp_send(harness.server, [inbox.inbox_id], raw)  # a retry of the same bytes is not stored twice
    listed = client.inboxes.messages.list(inbox.inbox_id)
    assert listed.count == 1
    assert listed.messages[0].message_id.startswith("<") and listed.messages[0].message_id.endswith(">")


def test_trash_needs_label_permission(harness: Harness) -> None:
    client = harness.client()
    inbox = client.inboxes.create()
    msg = make_message(inbox.inbox_id)
    smtp_send(harness.server, [inbox.inbox_id], msg.as_bytes())
    client.inboxes.messages.update(inbox.inbox_id, msg["Message-ID"], add_labels="trash")
    limited = client.api_keys.create(
        request={"name": "reader", "permissions": {"message_read": True}}
    ).api_key
    reader = harness.client(limited)
    assert reader.inboxes.messages.list(inbox.inbox_id, include_trash=True).count == 0
    assert reader.inboxes.threads.list(inbox.inbox_id, include_trash=True).count == 0
    with pytest.raises(ApiError) as info:
        reader.inboxes.messages.get(inbox.inbox_id, msg["Message-ID"], request_options=NO_RETRY)
    assert info.value.status_code == 404
    with pytest.raises(ApiError) as info:
        reader.inboxes.messages.update(
            inbox.inbox_id, msg["Message-ID"], add_labels="x", request_options=NO_RETRY
        )
    assert info.value.status_code == 403
    assert "trash" in client.inboxes.messages.get(inbox.inbox_id, msg["Message-ID"]).labels


@pytest.mark.parametrize("backend", BACKENDS)
def test_acked_messages_survive_sigkill(backend: str, fresh_server: Callable[..., ServerProcess]) -> None:
    server = fresh_server(backend).start()
    key = server.create_key()
    env = AgentMailEnvironment(http=server.base_url, websockets=server.ws_url)
    inbox = AgentMail(api_key=key, environment=env).inboxes.create()
    acked = []
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as smtp:
        for i in range(40):
            msg = make_message(inbox.inbox_id, subject=f"custody {i}")
            smtp.sendmail("sender@example.com", [inbox.inbox_id], msg.as_bytes())
            acked.append(msg["Message-ID"])
        server.kill()  # right after the last 250
    server.start()
    client = AgentMail(api_key=key, environment=env)
    stored = {m.message_id for m in client.inboxes.messages.list(inbox.inbox_id, limit=100).messages}
    assert set(acked) <= stored


def test_storage_failure_answers_451_then_retry_succeeds(harness: Harness) -> None:
    client = harness.client()
    inbox = client.inboxes.create()
    blobs = harness.server.data_dir / "blobs"
    for i in range(1000):  # an attachment too big for the database whose blob folder does not exist yet
        data = f"attachment {i} {inbox.inbox_id}".encode() * 4096
        folder = blobs / hashlib.sha256(data).hexdigest()[:2]
        if not folder.exists():
            break
    raw = make_message(inbox.inbox_id, attachments=[("a.bin", "application/octet-stream", data)]).as_bytes()
    folder.write_bytes(b"")  # a file where the blob store needs a folder: writes fail with ENOTDIR
    try:
        with pytest.raises(smtplib.SMTPDataError) as info:
            smtp_send(harness.server, [inbox.inbox_id], raw)
        assert info.value.smtp_code == 451
        assert client.inboxes.messages.list(inbox.inbox_id).count == 0
    finally:
        folder.unlink()
    smtp_send(harness.server, [inbox.inbox_id], raw)
    assert client.inboxes.messages.list(inbox.inbox_id).count == 1


def test_download_links_expire(fresh_server: Callable[..., ServerProcess]) -> None:
    server = fresh_server("sqlite", env={"AGENTMX_DOWNLOAD_URL_TTL": "3"}).start()
    env = AgentMailEnvironment(http=server.base_url, websockets=server.ws_url)
    client = AgentMail(api_key=server.create_key(), environment=env)
    inbox = client.inboxes.create()
    msg = make_message(inbox.inbox_id)
    smtp_send(server, [inbox.inbox_id], msg.as_bytes())
    asked = time.time()
    url = client.inboxes.messages.get_raw(inbox.inbox_id, msg["Message-ID"]).download_url
    assert download(url).content.endswith(msg.as_bytes())  # within the 3 s, even on a busy machine
    # Asked again until it is refused (3 to 4 s: the expiry is rounded up to a whole second), no earlier.
    expired = wait_for(lambda: (r := download(url)).status_code != 200 and r, interval=0.2)
    assert time.time() >= asked + 3
    assert expired.status_code == 403 and expired.json()["name"] == "ForbiddenError"


def test_non_ascii_recipient_filter(harness: Harness) -> None:
    client = harness.client()
    inbox = client.inboxes.create()
    msg = make_message(inbox.inbox_id, cc="Jörg Müller <jorg@example.com>")
    smtp_send(harness.server, [inbox.inbox_id], msg.as_bytes())
    assert client.inboxes.messages.list(inbox.inbox_id, to=["Jörg"]).count == 1
    assert client.inboxes.threads.list(inbox.inbox_id, recipients=["müller"]).count == 1


def test_unauthenticated_label_is_opt_in(fresh_server: Callable[..., ServerProcess]) -> None:
    server = fresh_server("sqlite", env={"AGENTMX_INBOUND_LABEL_UNAUTHENTICATED": "true"}).start()
    env = AgentMailEnvironment(http=server.base_url, websockets=server.ws_url)
    client = AgentMail(api_key=server.create_key(), environment=env)
    inbox = client.inboxes.create()
    bare = make_message(inbox.inbox_id, subject="no evidence")
    signed = make_message(inbox.inbox_id, subject="spf pass")
    signed["Authentication-Results"] = "mx.example.com; spf=pass smtp.mailfrom=example.com"
    for msg in (bare, signed):
        smtp_send(server, [inbox.inbox_id], msg.as_bytes())
    # A return path of ours as the envelope sender proves nothing: anybody may write it.
    posing = make_message(inbox.inbox_id, subject="posing as a bounce path")
    smtp_send(
        server, [inbox.inbox_id], posing.as_bytes(), mail_from="bounces+msg_x@" + inbox.inbox_id.split("@")[1]
    )
    # Mail from another inbox of this server, delivered locally, is our own.
    colleague = client.inboxes.create()
    client.inboxes.messages.send(colleague.inbox_id, to=inbox.inbox_id, subject="from a colleague", text="hi")
    wait_for(lambda: client.inboxes.messages.list(inbox.inbox_id, include_unauthenticated=True).count == 4)
    shown = [m.subject for m in client.inboxes.messages.list(inbox.inbox_id).messages]
    assert shown == ["from a colleague", "spf pass"]
    every = client.inboxes.messages.list(inbox.inbox_id, include_unauthenticated=True).messages
    assert [("unauthenticated" in m.labels) for m in every] == [False, True, False, True]


def test_concurrent_deliveries_share_commits_and_dedupe(harness: Harness) -> None:
    client = harness.client()
    a, b = client.inboxes.create(), client.inboxes.create()
    same = make_message(a.inbox_id, cc=b.inbox_id, subject="sent eight times at once")
    distinct = [make_message(a.inbox_id, subject=f"parallel {i}") for i in range(24)]
    jobs = [([a.inbox_id, b.inbox_id], same.as_bytes())] * 8 + [
        ([a.inbox_id], m.as_bytes()) for m in distinct
    ]
    with ThreadPoolExecutor(max_workers=12) as pool:
        assert all(r == {} for r in pool.map(lambda job: smtp_send(harness.server, *job), jobs))
    subjects = [m.subject for m in client.inboxes.messages.list(a.inbox_id, limit=100).messages]
    assert sorted(subjects) == sorted([f"parallel {i}" for i in range(24)] + ["sent eight times at once"])
    assert client.inboxes.messages.list(b.inbox_id).count == 1
    assert client.inboxes.threads.list(a.inbox_id, limit=100).count == 25


def test_connection_cap_per_ip_answers_421(fresh_server: Callable[..., ServerProcess]) -> None:
    server = fresh_server("sqlite", env={"AGENTMX_SMTP_MAX_CONNECTIONS_PER_IP": "2"}).start()
    first = smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=10)
    second = smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=10)
    try:
        with pytest.raises(smtplib.SMTPConnectError) as info:
            smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=10)
        assert info.value.smtp_code == 421
        assert first.noop()[0] == 250
    finally:
        first.quit()
        second.quit()
    for _ in range(100):  # slots are freed once the server sees the close
        try:
            with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=10) as again:
                assert again.noop()[0] == 250
            break
        except smtplib.SMTPConnectError:
            time.sleep(0.05)
    else:
        pytest.fail("connection slots were not freed")


def test_recipient_changes_apply_at_once(harness: Harness) -> None:
    """RCPT answers are cached briefly; pausing, resuming or deleting an inbox must not wait for that."""
    client = harness.client()
    inbox = client.inboxes.create()
    ghost = f"later-{time.time_ns()}@agentmx.localhost"
    refused = smtp_send(harness.server, [inbox.inbox_id, ghost], make_message(inbox.inbox_id).as_bytes())
    assert refused[ghost][0] == 550  # and the refusal is now cached
    created = client.inboxes.create(request=CreateInboxRequest(username=ghost.split("@")[0]))
    assert created.inbox_id == ghost
    assert smtp_send(harness.server, [ghost], make_message(ghost).as_bytes()) == {}
    client.inboxes.update(inbox.inbox_id, status="paused")
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        smtp_send(harness.server, [inbox.inbox_id], make_message(inbox.inbox_id).as_bytes())
    client.inboxes.update(inbox.inbox_id, status="active")
    assert smtp_send(harness.server, [inbox.inbox_id], make_message(inbox.inbox_id).as_bytes()) == {}
    client.inboxes.delete(ghost)
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        smtp_send(harness.server, [ghost], make_message(ghost).as_bytes())


def test_inbox_created_by_another_process_receives_at_once(
    fresh_server: Callable[..., ServerProcess],
) -> None:
    """Recipient lookups are cached per process; an unknown address must not stay refused."""
    first = fresh_server("postgres").start()
    second = fresh_server(database_url=first.database_url).start()
    client = Harness(first, "postgres").client()
    address = f"late{time.time_ns()}@agentmx.localhost"
    with smtplib.SMTP("127.0.0.1", second.smtp_port, timeout=10) as smtp:
        smtp.ehlo()
        smtp.mail("someone@example.com")
        assert smtp.rcpt(address)[0] == 550
    client.inboxes.create(request=CreateInboxRequest(username=address.split("@")[0]))
    refused = smtp_send(second, [address], make_message(address).as_bytes())
    assert refused == {}
    assert client.inboxes.messages.list(address).count == 1


@pytest.mark.parametrize(("workers", "level"), [("0", "info"), ("1", "info"), ("0", "debug")])
def test_session_transcripts_are_logged_at_debug_only(
    fresh_server: Callable[..., ServerProcess], workers: str, level: str
) -> None:
    """aiosmtpd logs each command line, envelope addresses included: not at the default level."""
    env = {"AGENTMX_LOG_LEVEL": level, "AGENTMX_SMTP_WORKERS": workers}
    server = fresh_server("sqlite", env=env).start()
    client = AgentMail(
        api_key=server.create_key(),
        environment=AgentMailEnvironment(http=server.base_url, websockets=server.ws_url),
    )
    inbox = client.inboxes.create().inbox_id
    smtp_send(server, [inbox], make_message(inbox).as_bytes(), mail_from="transcript@example.com")
    assert client.inboxes.messages.list(inbox).count == 1
    server.stop()
    assert ("transcript@example.com" in server.log_path.read_text()) is (level == "debug")


def test_ehlo_answer_is_whole_and_in_order(harness: Harness) -> None:
    """The multi-line EHLO answer (sent in one write) reads as before, line by line."""
    with socket.create_connection(("127.0.0.1", harness.server.smtp_port), timeout=30) as sock:
        f = sock.makefile("rb")
        assert f.readline().startswith(b"220")
        sock.sendall(b"EHLO client.example\r\n")
        lines = [f.readline()]
        while lines[-1][3:4] == b"-":
            lines.append(f.readline())
        sock.sendall(b"MAIL FROM:<ehlo@example.com>\r\n")
        assert f.readline().startswith(b"250")
    assert lines == [
        b"250-agentmx.localhost\r\n",
        b"250-SIZE 10485760\r\n",
        b"250-8BITMIME\r\n",
        b"250-SMTPUTF8\r\n",
        b"250-PIPELINING\r\n",
        b"250-ENHANCEDSTATUSCODES\r\n",
        b"250 HELP\r\n",
    ]


@pytest.mark.parametrize("workers", ["0", "1"])
def test_smtp_can_listen_apart_from_the_http_api(
    workers: str, fresh_server: Callable[..., ServerProcess]
) -> None:
    """AGENTMX_SMTP_HOST: mail from the world, the API kept on loopback behind a proxy."""
    env = {"AGENTMX_SMTP_HOST": "127.0.0.2", "AGENTMX_SMTP_WORKERS": workers}
    server = fresh_server("sqlite", env=env).start()  # the API answers on 127.0.0.1
    client = AgentMail(
        api_key=server.create_key(),
        environment=AgentMailEnvironment(http=server.base_url, websockets=server.ws_url),
    )
    inbox = client.inboxes.create().inbox_id
    with smtplib.SMTP("127.0.0.2", server.smtp_port, timeout=30) as smtp:
        smtp.sendmail("sender@example.com", [inbox], make_message(inbox).as_bytes())
    assert client.inboxes.messages.list(inbox).count == 1
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.smtp_port), timeout=5)
