"""Hypothesis against every operation in the OpenAPI document agentmx serves: never a 5xx.

The request strategy lives in agentmx.testing.api_fuzz (bench/api_fuzz.py runs it for longer).
Runs against a private server per backend, so created webhooks, lists and keys touch no other test.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentmx.testing import postgres
from agentmx.testing.api_fuzz import Target, describe, requests
from conftest import BACKENDS, make_server

EXAMPLES = 80


@pytest.fixture(scope="module", params=BACKENDS)
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    env = {"AGENTMX_SMTP_RELAY": "127.0.0.1:9", "AGENTMX_DNS_RESOLVER": "127.0.0.1:9"}
    server, url = make_server(Path(tmp_path_factory.mktemp(f"fuzz-{request.param}")), request.param, env)
    server.start()
    try:
        t = Target.seeded(server)
        yield t
        t.close()
    finally:
        server.stop()
        if url:
            postgres.drop_database(url)


def test_no_5xx_anywhere(target: Target) -> None:
    seen: list[str] = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        request = data.draw(requests(target))
        resp = target.send(request)
        seen.append(f"{request[0]} {request[1]}")
        assert resp.status_code < 500, describe(request, resp)

    check()
    assert len(seen) >= EXAMPLES // 2


def test_health_after_fuzzing(target: Target) -> None:
    assert target.http.get("/health").status_code == 200
    inbox = target.real["inbox_id"][0]
    assert target.http.get(f"/v0/inboxes/{inbox}/messages").status_code == 200
