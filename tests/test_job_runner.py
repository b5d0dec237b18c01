"""The job runner's failure paths on real servers: a job whose outcome cannot be written (the database
refuses the rows it records) is finished or counted as failed, never left claimed to run again
each time its lease lapses."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from agentmx.settings import normalize_database_url
from agentmx.testing.server import ServerProcess
from conftest import Harness
from events_support import Receiver, new_inbox, send_mail, wait_for

BACKENDS = ["sqlite", "postgres"]
LEASE = 1.0  # seconds: a job left claimed would run again this often

# The database refuses every webhook attempt row, as it would a value its column cannot hold.
REFUSE_ATTEMPTS = {
    "sqlite": [
        "CREATE TRIGGER refuse_attempts BEFORE INSERT ON webhook_attempts "
        "BEGIN SELECT RAISE(ABORT, 'attempt refused by the test'); END"
    ],
    "postgres": [
        "CREATE FUNCTION refuse_attempts() RETURNS trigger AS $$ BEGIN "
        "RAISE EXCEPTION 'attempt refused by the test'; END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER refuse_attempts BEFORE INSERT ON webhook_attempts "
        "FOR EACH ROW EXECUTE FUNCTION refuse_attempts()",
    ],
}


def run_sql(server: ServerProcess, *statements: str) -> list[Any]:
    """Run statements in the server's own database; returns the rows of the last one."""
    url = server.database_url or f"sqlite:///{server.data_dir / 'agentmx.db'}"

    async def run() -> list[Any]:
        engine = create_async_engine(normalize_database_url(url))
        rows: list[Any] = []
        try:
            async with engine.begin() as conn:
                for statement in statements:
                    result = await conn.execute(text(statement))
                    rows = list(result.all()) if result.returns_rows else []
        finally:
            await engine.dispose()
        return rows

    return asyncio.run(run())


def _jobs(server: ServerProcess) -> list[Any]:
    return run_sql(server, "SELECT kind, locked_by, last_error, payload, attempts FROM jobs")


def _payload(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else json.loads(value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_done_job_whose_outcome_cannot_be_recorded_runs_once(
    backend: str, fresh_server: Callable[..., ServerProcess]
) -> None:
    server = fresh_server(backend, env={"AGENTMX_JOB_LEASE": str(LEASE)}).start()
    run_sql(server, *REFUSE_ATTEMPTS[backend])
    client = Harness(server, backend).client()
    receiver = Receiver()
    try:
        inbox = new_inbox(client)
        client.webhooks.create(url=receiver.url, event_types=["message.received"])
        send_mail(server, inbox)
        receiver.wait(1)
        wait_for(lambda: not _jobs(server))  # finished without its attempt row
        time.sleep(LEASE * 4)  # was: claimed until the lease lapsed, then POSTed again, for ever
        assert len(receiver.deliveries) == 1
        assert server.log_path.read_text().count("recording its outcome failed") == 1  # logged once
        # Other jobs still run.
        other = new_inbox(client)
        send_mail(server, other, subject="next")
        receiver.wait(2)
    finally:
        receiver.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_retry_that_cannot_be_recorded_counts_as_a_failure(
    backend: str, fresh_server: Callable[..., ServerProcess]
) -> None:
    server = fresh_server(backend, env={"AGENTMX_JOB_LEASE": str(LEASE)}).start()
    run_sql(server, *REFUSE_ATTEMPTS[backend])
    client = Harness(server, backend).client()
    receiver = Receiver(status=lambda n: 503)
    try:
        inbox = new_inbox(client)
        client.webhooks.create(url=receiver.url, event_types=["message.received"])
        send_mail(server, inbox)
        receiver.wait(1)

        def released() -> Any:
            rows = [r for r in _jobs(server) if r.kind == "deliver_webhook" and r.locked_by is None]
            return rows[0] if rows else None

        job = wait_for(released)  # was: left claimed, attempts 0, POSTed again at every lapse
        assert _payload(job.payload)["unexpected_failures"] == 1
        assert job.attempts == 1
        assert job.last_error == "its outcome could not be recorded"
        time.sleep(LEASE * 3)  # the backoff (5 s) holds it, not the lease
        assert len(receiver.deliveries) == 1
    finally:
        receiver.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_job_whose_payload_is_not_an_object_is_dropped(
    backend: str, fresh_server: Callable[..., ServerProcess]
) -> None:
    """Was: it failed the whole claim at every lease, and jobs claimed with it waited behind it."""
    server = fresh_server(backend, env={"AGENTMX_JOB_LEASE": str(LEASE)}).start()
    client = Harness(server, backend).client()
    receiver = Receiver()
    try:
        inbox = new_inbox(client)
        client.webhooks.create(url=receiver.url, event_types=["message.received"])
        cast = "" if backend == "sqlite" else "::json"
        for payload in ("[1]", '"x"', "null"):  # claimed first: due long ago
            run_sql(
                server,
                "INSERT INTO jobs (kind, payload, run_at, attempts, created_at) VALUES "
                f"('deliver_webhook', '{payload}'{cast}, '2020-01-01 00:00:00', 0, '2020-01-01 00:00:00')",
            )
        send_mail(server, inbox)
        receiver.wait(1)
        wait_for(lambda: not _jobs(server))
        log = server.log_path.read_text()
        assert log.count("is not a JSON object") == 3
        assert "job claim failed" not in log
    finally:
        receiver.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_backlog_is_claimed_as_slots_free_not_at_each_poll(
    backend: str, fresh_server: Callable[..., ServerProcess]
) -> None:
    """Was: after a full claim (32 jobs) the runner waited for the next poll or commit, so a backlog
    (a receiver back after an outage, a restart) drained at 32 jobs per poll interval."""
    poll = 8.0  # long enough that a loaded machine's slower deliveries are not mistaken for a poll
    server = fresh_server(backend, env={"AGENTMX_JOB_POLL_INTERVAL": str(poll)}).start()
    client = Harness(server, backend).client()
    receiver = Receiver()
    try:
        inbox = new_inbox(client)
        hooks = 80  # one message, one commit: 80 deliveries due at once (2.5 claims' worth)
        for _ in range(hooks):
            client.inboxes.webhooks.create(inbox, url=receiver.url, event_types=["message.received"])
        send_mail(server, inbox)
        deliveries = receiver.wait(hooks, timeout=4 * poll)
        span = deliveries[-1].at - deliveries[0].at
        assert span < poll / 2, f"{hooks} deliveries took {span:.2f} s"  # was >= 2 polls
    finally:
        receiver.close()
