"""Per-key rate limiting: off by default, 429 with Retry-After when configured."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from agentmx.errors import RateLimited
from agentmx.services.caller import Caller
from agentmx.services.ratelimit import RateLimiter
from agentmx.testing.server import ServerProcess


@pytest.mark.parametrize("backend", ["sqlite"])
def test_rate_limit_per_key(backend: str, fresh_server: Callable[..., ServerProcess]) -> None:
    server = fresh_server(backend, env={"AGENTMX_RATE_LIMIT_PER_MINUTE": "3"}).start()
    first, second = server.create_key(), server.create_key()
    url = server.base_url + "/v0/inboxes"

    def get(key: str) -> httpx.Response:
        return httpx.get(url, headers={"Authorization": f"Bearer {key}"})

    assert [get(first).status_code for _ in range(3)] == [200, 200, 200]
    limited = get(first)
    assert limited.status_code == 429
    assert limited.json()["code"] == "rate_limit_exceeded"
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    # Limits are per key: another key is unaffected.
    assert get(second).status_code == 200


def test_bucket_refills_at_the_configured_rate() -> None:
    now = [0.0]
    limiter = RateLimiter(60, clock=lambda: now[0])  # one request a second, bursts of 60
    caller = Caller(organization_id="org", api_key_id="k")
    for _ in range(60):
        limiter.check(caller)
    with pytest.raises(RateLimited) as limited:
        limiter.check(caller)
    assert limited.value.retry_after == 1
    now[0] += 1.0
    limiter.check(caller)  # one token came back
    with pytest.raises(RateLimited):
        limiter.check(caller)
