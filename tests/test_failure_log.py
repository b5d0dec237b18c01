"""A background loop that keeps failing logs its first failure whole, then a line a minute, then its recovery."""

from __future__ import annotations

import logging

import pytest

from agentmx.failure_log import REPEAT_EVERY, FailureLog


def test_an_outage_is_three_kinds_of_line_not_a_traceback_a_poll(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    failures = FailureLog(logging.getLogger("agentmx.test"), "job claim", clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="agentmx.test"):
        for _ in range(300):  # two and a half minutes of polls every half second
            try:
                raise ConnectionRefusedError("connection refused")
            except ConnectionRefusedError as exc:
                failures.failed(exc)
            now[0] += 0.5
        failures.succeeded()
        failures.succeeded()
    lines = [(r.levelname, r.getMessage(), r.exc_info is not None) for r in caplog.records]
    assert lines[0] == ("ERROR", "job claim failed", True)
    repeats = lines[1:-1]
    assert len(repeats) == int(150 // REPEAT_EVERY)
    assert all(level == "ERROR" and "still failing" in msg and not tb for level, msg, tb in repeats)
    assert lines[-1] == ("WARNING", "job claim works again after 300 failures", False)
