"""Bounces add read-only suppression entries to the organization's send block list."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from agentmail import AgentMail
from agentmail.core.api_error import ApiError
from agentmail.environment import AgentMailEnvironment

from agentmx.testing.server import ServerProcess
from conftest import BACKENDS, NO_RETRY, run_agentmx
from send_support import Sink, ext, new_inbox, wait_for


@pytest.mark.parametrize("backend", BACKENDS)
def test_bounce_adds_read_only_send_block_entry(
    backend: str, fresh_server: Callable[..., ServerProcess]
) -> None:
    sink = Sink().start()
    try:
        env = {"AGENTMX_SMTP_RELAY": sink.address, "AGENTMX_OUTBOUND_RETRY_SCHEDULE": "0.5"}
        server = fresh_server(backend, env=env).start()
        environment = AgentMailEnvironment(http=server.base_url, websockets=server.ws_url)
        client = AgentMail(api_key=server.create_key(), environment=environment)
        inbox = new_inbox(client)
        dead = ext("bounce-")
        client.inboxes.messages.send(inbox, to=dead, subject="hello", text="hi")

        entry = wait_for(
            lambda: next((e for e in client.lists.list("send", "block").entries if e.entry == dead), None)
        )
        assert entry.read_only is True and entry.reason == "bounced" and entry.entry_type == "email"

        with pytest.raises(ApiError) as refused:
            client.lists.delete("send", "block", dead, request_options=NO_RETRY)
        assert refused.value.status_code == 403

        with pytest.raises(ApiError) as suppressed:
            client.inboxes.messages.send(inbox, to=dead, subject="again", text="hi", request_options=NO_RETRY)
        assert suppressed.value.status_code == 403

        # The operator may lift it (a bounce report can be forged by any recipient of the message).
        storage = ["--data-dir", str(server.data_dir)]
        if server.database_url:
            storage += ["--database-url", server.database_url]
        lifted = run_agentmx("suppressions", "remove", dead, *storage, env={})
        assert lifted.returncode == 0, lifted.stderr
        assert all(e.entry != dead for e in client.lists.list("send", "block").entries)
        assert run_agentmx("suppressions", "remove", dead, *storage, env={}).returncode == 1
        # Lifted means lifted: the earlier bounce in the message history no longer refuses it.
        assert client.inboxes.messages.send(
            inbox, to=dead, subject="again", text="hi", request_options=NO_RETRY
        )

        start = datetime.now(UTC) - timedelta(minutes=10)
        rates = client.metrics.query_rates(period=60, window=600, start=start)
        assert rates["bounce"][-1].sent >= 1 and (rates["bounce"][-1].rate or 0) > 0
    finally:
        sink.stop()
