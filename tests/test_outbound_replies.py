"""Outbound delivery against a host whose replies break the rules (a scripted raw SMTP server on loopback,
the relay here): what the user sees (labels, events, suppression through the SDK) must follow what the
host did with the message, never a reply the client misread."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from agentmail import AgentMail
from agentmail.environment import AgentMailEnvironment

from agentmx.testing.server import ServerProcess
from conftest import BACKENDS, NO_RETRY
from scripted_smtp import ScriptedHost
from send_support import events_for, ext, new_inbox, wait_for


@dataclass
class Setup:
    server: ServerProcess
    host: ScriptedHost
    client: AgentMail
    inbox: str

    def labels(self, message_id: str) -> set[str]:
        return set(self.client.inboxes.messages.get(self.inbox, message_id).labels)


@pytest.fixture(params=BACKENDS)
def setup(request: pytest.FixtureRequest, fresh_server: Callable[..., ServerProcess]) -> Iterator[Setup]:
    host = ScriptedHost()
    env = {"AGENTMX_SMTP_RELAY": host.address, "AGENTMX_OUTBOUND_RETRY_SCHEDULE": "0.3"}
    server = fresh_server(request.param, env=env).start()
    environment = AgentMailEnvironment(http=server.base_url, websockets=server.ws_url)
    client = AgentMail(api_key=server.create_key(), environment=environment)
    try:
        yield Setup(server, host, client, new_inbox(client))
    finally:
        server.stop()
        host.stop()


@pytest.mark.parametrize(
    ("stage", "reply"),
    [("mail", b"251 2.1.0 Sender ok, sort of\r\n"), ("rcpt", b"252 2.1.5 Cannot verify, will attempt\r\n")],
)
def test_a_positive_reply_other_than_250_goes_on_with_the_transaction(
    setup: Setup, stage: str, reply: bytes
) -> None:
    """Any 2yz is a positive completion (RFC 5321 4.2.1). The library takes only 250 (and 251 to RCPT):
    its refusal of the other codes was read as the final reply, and the message was marked delivered
    with no RCPT or no DATA ever sent."""
    setup.host.script[stage] = reply
    sent = setup.client.inboxes.messages.send(setup.inbox, to=ext(), text="the whole transaction")
    wait_for(lambda: setup.host.messages)
    wait_for(lambda: "delivered" in setup.labels(sent.message_id))
    assert setup.host.commands[:4] == ["EHLO", "MAIL", "RCPT", "DATA"]


def test_a_positive_reply_to_the_data_command_is_no_delivery(setup: Setup) -> None:
    """A 250 to DATA, where 354 must come, means the message was never sent: before, it was marked
    delivered. It is retried, and goes once the host behaves."""
    setup.host.script["data"] = b"250 2.0.0 Ok\r\n"
    sent = setup.client.inboxes.messages.send(setup.inbox, to=ext(), text="not sent yet")
    wait_for(lambda: "delayed" in setup.labels(sent.message_id))
    wait_for(lambda: setup.host.commands.count("DATA") >= 2)  # retried
    assert "delivered" not in setup.labels(sent.message_id)
    assert not events_for(setup.server, "message.delivered", "delivery", sent.message_id)
    assert not setup.host.messages
    del setup.host.script["data"]
    wait_for(lambda: "delivered" in setup.labels(sent.message_id))
    assert len(setup.host.messages) == 1


@pytest.mark.parametrize("reply", [b"999 9.9.9 What\r\n", b"600 Nope\r\n"])
def test_a_reply_code_outside_2xx_to_5xx_is_no_bounce(setup: Setup, reply: bytes) -> None:
    """Reply codes begin with 2 to 5 (RFC 5321 4.2.1): 999 says nothing the client understands, so it
    is retried as a temporary failure. It bounced the recipient and suppressed the address."""
    setup.host.script["rcpt"] = reply
    to = ext()
    sent = setup.client.inboxes.messages.send(setup.inbox, to=to, text="later")
    wait_for(lambda: "delayed" in setup.labels(sent.message_id))
    assert "bounced" not in setup.labels(sent.message_id)
    del setup.host.script["rcpt"]
    wait_for(lambda: "delivered" in setup.labels(sent.message_id))
    assert not events_for(setup.server, "message.bounced", "bounce", sent.message_id)
    setup.client.inboxes.messages.send(setup.inbox, to=to, text="not suppressed", request_options=NO_RETRY)


def test_a_policy_refusal_at_rcpt_bounces_without_suppressing(setup: Setup) -> None:
    """A 5.7.x status (RFC 3463: security or policy) to RCPT refuses the sender, not the address: a
    relay denying relaying (Postfix's "554 5.7.1 Relay access denied" comes at RCPT), a receiver
    blocklisting our IP. It suppressed every such recipient for the whole organization."""
    setup.host.script["rcpt"] = b"554 5.7.1 <x@remote.test>: Relay access denied\r\n"
    to = ext()
    sent = setup.client.inboxes.messages.send(setup.inbox, to=to, text="refused by policy")
    wait_for(lambda: "bounced" in setup.labels(sent.message_id))
    bounces = events_for(setup.server, "message.bounced", "bounce", sent.message_id)
    assert [b["bounce"]["type"] for b in bounces] == ["Transient"]
    del setup.host.script["rcpt"]
    again = setup.client.inboxes.messages.send(
        setup.inbox, to=to, text="relay fixed", request_options=NO_RETRY
    )
    wait_for(lambda: "delivered" in setup.labels(again.message_id))


def test_a_host_that_does_not_know_ehlo_gets_helo(setup: Setup) -> None:
    """A server that refuses EHLO as an unknown command is sent HELO (RFC 5321 3.2): it was retried,
    EHLO after EHLO, until the message's lifetime ran out."""
    setup.host.script["ehlo"] = b"502 5.5.2 Error: command not recognized\r\n"
    sent = setup.client.inboxes.messages.send(setup.inbox, to=ext(), text="plain old SMTP")
    wait_for(lambda: "delivered" in setup.labels(sent.message_id))
    assert setup.host.commands[:3] == ["EHLO", "HELO", "MAIL"]
