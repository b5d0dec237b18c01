"""A webhook attempt's whole time (address lookup, connect, send, read) is bounded by
AGENTMX_WEBHOOK_TIMEOUT: a slow resolver used to hold the delivery (and its job slot) past it.

The lookup is the system's (getaddrinfo, /etc/resolv.conf), so the server runs in a mount
namespace of its own whose resolv.conf names a loopback DNS server on port 53. That takes root
(or CAP_SYS_ADMIN and CAP_NET_BIND_SERVICE); elsewhere the test is skipped.
"""

from __future__ import annotations

import os
import random
import shutil
import smtplib
import subprocess
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from dnslib.server import DNSLogger, DNSServer

from agentmx.testing.dns import ZoneResolver
from agentmx.testing.server import ServerProcess
from conftest import Harness
from events_support import Receiver, new_inbox, send_mail, wait_for

TIMEOUT = 2  # seconds, AGENTMX_WEBHOOK_TIMEOUT


@pytest.fixture
def slow_dns(tmp_path: Path) -> Iterator[tuple[ZoneResolver, list[str]]]:
    """A DNS server on a loopback address's port 53, and the launcher that makes it a server's resolver."""
    if not shutil.which("unshare") or subprocess.run(["unshare", "-m", "true"]).returncode != 0:
        pytest.skip("no private mount namespace here (needs root)")
    resolver = ZoneResolver()
    address = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
    logger = DNSLogger(log="-request,-reply,-truncated,-error", prefix=False)
    try:
        server = DNSServer(resolver, address=address, port=53, logger=logger)
    except OSError as exc:
        pytest.skip(f"cannot serve DNS on {address}:53 ({exc})")
    server.start_thread()
    resolv_conf = tmp_path / "resolv.conf"
    resolv_conf.write_text(f"nameserver {address}\noptions timeout:30 attempts:1\n")
    script = 'mount --bind "$0" /etc/resolv.conf && exec "$@"'
    try:
        yield resolver, ["unshare", "-m", "sh", "-c", script, str(resolv_conf)]
    finally:
        resolver.release.set()
        server.stop()


def test_a_slow_lookup_counts_against_the_webhook_timeout(
    tmp_path: Path, slow_dns: tuple[ZoneResolver, list[str]]
) -> None:
    resolver, launcher = slow_dns
    resolver.set_zone("hook.test. 60 IN A 127.0.0.1")
    env = {"AGENTMX_WEBHOOK_TIMEOUT": str(TIMEOUT), "AGENTMX_WEBHOOK_RETRY_SCHEDULE": "0,1,1"}
    server = ServerProcess(tmp_path / "srv", env=env, launcher=launcher).start()
    harness = Harness(server, "sqlite")
    receiver = Receiver()
    try:
        client = harness.client()
        inbox = new_inbox(client)
        port = receiver.server.server_address[1]
        client.webhooks.create(url=f"http://hook.test:{port}/hook", event_types=["message.received"])
        with resolver.lock:  # answers wait (10 s at most) from now on
            resolver.release.clear()
            resolver.holding = True
        send_mail(server, inbox)
        # Was: the attempt waited for the answer and took as long as the lookup (~10 s).
        timed_out = (
            "SELECT count(*) FROM webhook_attempts WHERE attempt = 0 AND status_code IS NULL "
            f"AND error LIKE '%not found within {TIMEOUT} s%' AND duration_ms < {TIMEOUT * 1000 + 1500}"
        )
        wait_for(lambda: harness.count_rows(timed_out) == 1, timeout=30)
        assert not receiver.deliveries
        with resolver.lock:
            resolver.holding = False
        resolver.release.set()
        receiver.wait(1, timeout=30)  # a retry once the resolver answers
    finally:
        receiver.close()
        server.stop()


def test_lookups_held_by_a_hung_resolver_do_not_stop_mail_being_stored(
    tmp_path: Path, slow_dns: tuple[ZoneResolver, list[str]]
) -> None:
    """getaddrinfo keeps its thread until the resolver answers, past any deadline: in the loop's
    default pool (a few threads) a dozen stuck lookups held the blob writes of incoming mail."""
    resolver, launcher = slow_dns
    hooks = 12
    resolver.set_zone("\n".join(f"hook{i}.test. 60 IN A 127.0.0.1" for i in range(hooks)))
    env = {"AGENTMX_WEBHOOK_TIMEOUT": str(TIMEOUT), "AGENTMX_WEBHOOK_RETRY_SCHEDULE": "0,60"}
    server = ServerProcess(tmp_path / "srv", env=env, launcher=launcher).start()
    harness = Harness(server, "sqlite")
    try:
        client = harness.client()
        inbox = new_inbox(client)
        for i in range(hooks):
            client.webhooks.create(url=f"http://hook{i}.test:9/hook", event_types=["message.received"])
        with resolver.lock:  # answers wait (10 s at most) from now on
            resolver.release.clear()
            resolver.holding = True
        send_mail(server, inbox)
        wait_for(lambda: resolver.held >= hooks - 4, timeout=30)  # the lookups are stuck in their threads
        big = EmailMessage()
        big["From"], big["To"], big["Subject"] = "alice@example.com", inbox, "Stored while lookups hang"
        big.set_content("see attached")
        big.add_attachment(os.urandom(300_000), maintype="application", subtype="octet-stream")
        started = time.monotonic()
        with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as smtp:
            smtp.send_message(big)  # its bytes go to a file (over the 64 KiB kept in the database)
        assert time.monotonic() - started < 5  # was about 10 s: until the resolver answered
    finally:
        with resolver.lock:
            resolver.holding = False
        resolver.release.set()
        server.stop()


def test_a_hung_lookup_does_not_hold_the_exit(
    tmp_path: Path, slow_dns: tuple[ZoneResolver, list[str]]
) -> None:
    """The lookup threads are daemons: a getaddrinfo stuck on the resolver no longer kept the
    process alive after SIGTERM until it answered (~10 s here, the resolver's own timeouts elsewhere)."""
    resolver, launcher = slow_dns
    resolver.set_zone("exit.test. 60 IN A 127.0.0.1")
    env = {"AGENTMX_WEBHOOK_TIMEOUT": str(TIMEOUT), "AGENTMX_WEBHOOK_RETRY_SCHEDULE": "0,60"}
    server = ServerProcess(tmp_path / "srv", env=env, launcher=launcher).start()
    try:
        client = Harness(server, "sqlite").client()
        inbox = new_inbox(client)
        client.webhooks.create(url="http://exit.test:9/hook", event_types=["message.received"])
        with resolver.lock:  # answers wait (10 s at most) from now on
            resolver.release.clear()
            resolver.holding = True
        send_mail(server, inbox)
        wait_for(lambda: resolver.held >= 1, timeout=30)  # the lookup is stuck in its thread
        started = time.monotonic()
        server.stop()
        elapsed = time.monotonic() - started
        assert server.proc.returncode is not None
        assert elapsed < 5  # was about 10 s: until the resolver answered
    finally:
        with resolver.lock:
            resolver.holding = False
        resolver.release.set()
        server.stop()
