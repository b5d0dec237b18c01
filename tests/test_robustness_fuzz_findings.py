"""5xx found by a 15-minute bench/api_fuzz.py run per backend: each is now a 4xx in AgentMail's error shape.

* ``GET /v0/metrics/rates?period=0``: ``window % period`` divided by zero before the period was checked.
* ``GET /v0/downloads/<forged token>`` with non-ASCII after the dot: ``hmac.compare_digest`` raises
  TypeError for a str with non-ASCII characters.
"""

from __future__ import annotations

import httpx
import pytest

from conftest import Harness


@pytest.mark.parametrize("path", ["/v0/metrics/rates", "/v0/pods/{pod}/metrics/rates"])
def test_rates_with_period_zero_is_a_400(http: httpx.Client, harness: Harness, path: str) -> None:
    pod = http.post("/v0/inboxes", json={"username": harness.new_username()}).json()["pod_id"]
    resp = http.get(path.format(pod=pod), params={"period": "0"})
    assert resp.status_code == 400, resp.text
    assert resp.json()["code"] == "validation_error"
    assert "period" in resp.json()["message"]


@pytest.mark.parametrize("token", [".Y'\U000f60be", "abc.é", "abc." + "ü" * 64, "%E2%80%AE.%F3%A8%AE%A0"])
def test_forged_download_token_with_non_ascii_is_a_404(http: httpx.Client, token: str) -> None:
    resp = http.get("/v0/downloads/" + token)
    assert resp.status_code == 404, resp.text
    assert resp.json()["name"] == "NotFoundError"
