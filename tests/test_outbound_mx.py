"""Delivery over MX records from a loopback DNS server to aiosmtpd sinks: which host gets the mail when
lookups or hosts fail. The MX hosts share the one outbound port, each on its own loopback address."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from agentmail import AgentMail
from agentmail.environment import AgentMailEnvironment

from agentmx.testing.dns import LoopbackDNS
from agentmx.testing.server import ServerProcess, free_port
from conftest import BACKENDS
from send_support import Sink, events_for, new_inbox, wait_for


@dataclass
class MxEnv:
    server: ServerProcess
    dns: LoopbackDNS
    primary: Sink  # 127.0.0.1
    backup: Sink  # 127.0.0.2
    v6: Sink  # ::1

    def client(self) -> AgentMail:
        env = AgentMailEnvironment(http=self.server.base_url, websockets=self.server.ws_url)
        return AgentMail(api_key=self.server.create_key(), environment=env)


ZONE = """
two-mx.test. 60 IN MX 10 mx1.two-mx.test.
two-mx.test. 60 IN MX 20 mx2.two-mx.test.
mx1.two-mx.test. 60 IN A 127.0.0.1
mx2.two-mx.test. 60 IN A 127.0.0.2
v4-only.test. 60 IN MX 10 mx.v4-only.test.
mx.v4-only.test. 60 IN A 127.0.0.1
v6-only.test. 60 IN MX 10 mx.v6-only.test.
mx.v6-only.test. 60 IN AAAA ::1
flaky-mx.test. 60 IN MX 10 mx1.flaky-mx.test.
flaky-mx.test. 60 IN MX 20 mx2.flaky-mx.test.
mx1.flaky-mx.test. 60 IN A 127.0.0.1
mx2.flaky-mx.test. 60 IN A 127.0.0.2
both-fail.test. 60 IN MX 10 mx.both-fail.test.
mx.both-fail.test. 60 IN A 127.0.0.1
"""


@pytest.fixture(params=BACKENDS)
def mx(request: pytest.FixtureRequest, fresh_server: Callable[..., ServerProcess]) -> Iterator[MxEnv]:
    port = free_port()
    sinks = [Sink(host=host, port=port).start() for host in ("127.0.0.1", "127.0.0.2", "::1")]
    with LoopbackDNS(ZONE) as dns:
        env = {
            "AGENTMX_DNS_RESOLVER": dns.address,
            "AGENTMX_OUTBOUND_PORT": str(port),
            "AGENTMX_OUTBOUND_RETRY_SCHEDULE": "0.5",
        }
        server = fresh_server(request.param, env=env).start()
        try:
            yield MxEnv(server, dns, *sinks)
        finally:
            server.stop()
            for sink in sinks:
                sink.stop()


def _labels(client: AgentMail, inbox_id: str, message_id: str) -> set[str]:
    return set(client.inboxes.messages.get(inbox_id, message_id).labels)


def test_a_failed_address_lookup_of_one_family_does_not_hold_back_the_other(mx: MxEnv) -> None:
    """A SERVFAIL on AAAA where A answered is no reason to wait (and the reverse): Postfix and Exim
    deliver to the addresses they have."""
    mx.dns.fail("mx.v4-only.test", "AAAA")
    mx.dns.fail("mx.v6-only.test", "A")
    for rdtype in ("A", "AAAA"):  # the first MX cannot be looked up at all: the second has an address
        mx.dns.fail("mx1.flaky-mx.test", rdtype)
    client = mx.client()
    a = new_inbox(client)
    v4, v6, flaky = "someone@v4-only.test", "other@v6-only.test", "third@flaky-mx.test"
    sent = client.inboxes.messages.send(a, to=[v4, v6, flaky], text="over whichever family answered")
    wait_for(lambda: mx.primary.handler.for_rcpt(v4))
    wait_for(lambda: mx.v6.handler.for_rcpt(v6))
    wait_for(lambda: mx.backup.handler.for_rcpt(flaky))
    wait_for(lambda: "delivered" in _labels(client, a, sent.message_id))
    assert "delayed" not in _labels(client, a, sent.message_id)


def test_both_address_lookups_failing_defers(mx: MxEnv) -> None:
    mx.dns.fail("mx.both-fail.test", "A")
    mx.dns.fail("mx.both-fail.test", "AAAA")
    client = mx.client()
    a = new_inbox(client)
    to = "x@both-fail.test"
    sent = client.inboxes.messages.send(a, to=to, text="later")
    wait_for(lambda: "delayed" in _labels(client, a, sent.message_id))
    assert "bounced" not in _labels(client, a, sent.message_id)
    mx.dns.resolver.failures.clear()  # DNS recovers: the retry delivers
    wait_for(lambda: mx.primary.handler.for_rcpt(to))
    wait_for(lambda: "delivered" in _labels(client, a, sent.message_id))


@pytest.mark.parametrize("stage", ["RCPT", "MAIL"])
def test_a_temporary_refusal_by_one_mx_tries_the_next(mx: MxEnv, stage: str) -> None:
    """Postfix (smtp_trouble.c: smtp_rcpt_fail, smtp_bulk_fail) keeps a recipient a non-final host
    answered 4xx for the next host, at RCPT as at MAIL; only the last host's 4xx defers it."""
    refusal = "451 4.7.1 Greylisted, try again later"
    if stage == "RCPT":
        mx.primary.handler.refuse_rcpt = refusal
    else:
        mx.primary.handler.refuse_mail = refusal
    client = mx.client()
    a = new_inbox(client)
    to = "someone@two-mx.test"
    sent = client.inboxes.messages.send(a, to=to, text="via the backup")
    wait_for(lambda: mx.backup.handler.for_rcpt(to))
    wait_for(lambda: "delivered" in _labels(client, a, sent.message_id))
    assert "delayed" not in _labels(client, a, sent.message_id)
    assert not mx.primary.handler.for_rcpt(to)
    delivered = events_for(mx.server, "message.delivered", "delivery", sent.message_id)
    assert [e["delivery"]["recipients"] for e in delivered] == [[to]]


def test_the_last_mx_temporary_refusal_defers_and_a_permanent_one_bounces_at_once(mx: MxEnv) -> None:
    mx.primary.handler.refuse_rcpt = "451 4.7.1 Greylisted"
    mx.backup.handler.refuse_rcpt = "451 4.7.1 Greylisted"
    client = mx.client()
    a = new_inbox(client)
    soft = client.inboxes.messages.send(a, to="soft@two-mx.test", text="later")
    wait_for(lambda: "delayed" in _labels(client, a, soft.message_id))
    assert mx.backup.handler.attempts.get("soft@two-mx.test")
    mx.primary.handler.refuse_rcpt = "550 5.1.1 No such user"  # a 5xx is final: no backup asked
    backup_tries = mx.backup.handler.attempts.get("gone@two-mx.test", 0)
    gone = client.inboxes.messages.send(a, to="gone@two-mx.test", text="nobody")
    wait_for(lambda: "bounced" in _labels(client, a, gone.message_id))
    assert mx.backup.handler.attempts.get("gone@two-mx.test", 0) == backup_tries


def test_an_idn_domain_is_looked_up_and_addressed_by_the_same_a_label(mx: MxEnv) -> None:
    """IDNA 2008 (what DNS, registries and browsers use, and agentmx for its own domains): "straße" is
    xn--strae-oqa. The MX was looked up so, but RCPT TO named IDNA 2003's "strasse", another domain."""
    mx.dns.set_zone(ZONE + "xn--strae-oqa.test. 60 IN MX 10 mx.v4-only.test.\n")
    client = mx.client()
    a = new_inbox(client)
    sent = client.inboxes.messages.send(a, to="jorg@straße.test", text="gruß")
    wait_for(lambda: mx.primary.handler.received)
    assert [r.rcpt_tos for r in mx.primary.handler.received] == [["jorg@xn--strae-oqa.test"]]
    wait_for(lambda: "delivered" in _labels(client, a, sent.message_id))


def test_one_message_to_several_domains_with_mixed_outcomes(mx: MxEnv) -> None:
    """Each recipient gets its own outcome and is announced once, in payloads the SDK's models read."""
    from agentmail.events.types import MessageBouncedEvent, MessageDeliveredEvent  # noqa: PLC0415

    mx.dns.set_zone(ZONE + "nullmx.test. 60 IN MX 0 .\n")
    mx.dns.fail("mx.both-fail.test", "A")
    mx.dns.fail("mx.both-fail.test", "AAAA")
    client = mx.client()
    a = new_inbox(client)
    ok, later, other = "ok@v4-only.test", "soft2-x@v4-only.test", "y@two-mx.test"
    unknown, nowhere, stuck = "bounce-z@v4-only.test", "w@nullmx.test", "s@both-fail.test"
    rcpts = [ok, later, other, unknown, nowhere, stuck]
    sent = client.inboxes.messages.send(a, to=rcpts, text="to many")

    def delivered() -> list[str]:
        bodies = events_for(mx.server, "message.delivered", "delivery", sent.message_id)
        return sorted(r for b in bodies for r in MessageDeliveredEvent.model_validate(b).delivery.recipients)

    wait_for(lambda: delivered() == sorted([ok, later, other]))
    bounces = [
        MessageBouncedEvent.model_validate(b).bounce
        for b in events_for(mx.server, "message.bounced", "bounce", sent.message_id)
    ]
    assert sorted(r.address for b in bounces for r in b.recipients) == sorted([unknown, nowhere])
    assert {b.type for b in bounces} == {"Permanent"}
    assert {"delivered", "bounced", "delayed"} <= _labels(client, a, sent.message_id)
    # The unreachable domain's recipient is still being retried; the others are done, once each.
    assert [len(mx.primary.handler.for_rcpt(r)) for r in (ok, later, other)] == [1, 1, 1]
    mx.dns.resolver.failures.clear()
    wait_for(lambda: delivered() == sorted([ok, later, other, stuck]))
