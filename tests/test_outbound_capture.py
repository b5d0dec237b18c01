"""Test mode (AGENTMX_OUTBOUND_CAPTURE): remote recipients get simulated outcomes, nothing is sent."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from agentmail import AgentMail
from agentmail.core.api_error import ApiError
from agentmail.environment import AgentMailEnvironment

from agentmx.testing.server import ServerProcess
from conftest import NO_RETRY
from send_support import Sink, events_for, ext, new_inbox, wait_for


def test_capture_mode_simulates_outcomes_and_sends_nothing(
    fresh_server: Callable[..., ServerProcess],
) -> None:
    relay = Sink().start()  # would receive the mail if any were sent
    env = {"AGENTMX_OUTBOUND_CAPTURE": "true", "AGENTMX_SMTP_RELAY": relay.address}
    server = fresh_server("sqlite", env=env).start()
    try:
        environment = AgentMailEnvironment(http=server.base_url, websockets=server.ws_url)
        client = AgentMail(api_key=server.create_key(), environment=environment)
        a, colleague = new_inbox(client), new_inbox(client)
        fine, dead, annoyed = ext("agent-"), ext("bounce-"), ext("complaint-")
        sent = client.inboxes.messages.send(a, to=[fine, dead, annoyed, colleague], text="test run")

        def labels() -> set[str]:
            return set(client.inboxes.messages.get(a, sent.message_id).labels)

        wait_for(lambda: {"delivered", "bounced", "complained"} <= labels())
        delivered = events_for(server, "message.delivered", "delivery", sent.message_id)
        assert sorted(delivered[0]["delivery"]["recipients"]) == sorted([fine, annoyed, colleague])
        bounced = events_for(server, "message.bounced", "bounce", sent.message_id)
        assert bounced[0]["bounce"]["recipients"] == [{"address": dead, "status": "bounced"}]
        complained = events_for(server, "message.complained", "complaint", sent.message_id)
        assert complained[0]["complaint"]["recipients"] == [annoyed]
        # The colleague's inbox on this server got the mail; nothing reached the relay.
        assert [m.message_id for m in client.inboxes.messages.list(colleague).messages] == [sent.message_id]
        assert relay.handler.received == [] and relay.handler.attempts == {}
        # Simulated bounces and complaints suppress as real ones do.
        for blocked in (dead, annoyed):
            with pytest.raises(ApiError) as refused:
                client.inboxes.messages.send(a, to=blocked, text="again", request_options=NO_RETRY)
            assert refused.value.status_code == 403
        assert "AGENTMX_OUTBOUND_CAPTURE is on" in server.log()
    finally:
        server.stop()
        relay.stop()
