"""SQLite: a search that scans a large mailbox does not hold up the server's other requests.

SQLite statements run on the event loop thread (db/sqlite_inline), so a scan there stalled every
request, WebSocket frame and job for its whole duration. Searches and filtered lists run on worker
threads (db/sqlite_scans); a cheap request sent meanwhile is answered before the search ends.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from agentmx.testing.mailbox_seed import seed_messages
from agentmx.testing.server import ServerProcess

MESSAGES = 30_000
# Each word but the last matches every message, so SQLite tests them all against every message: on
# the development machine about 2 s for each request, against a few ms for the cheap one.
SLOW_QUERY = "text " * 25 + "zq"
# The same for a list filter (the word ends each subject). The last value matches messages 2999 and
# 29990-29999, which come late in the list's order: the page is the statement's whole scan.
SLOW_SUBJECTS = ["subject"] * 100 + ["subject 2999"]
SLOW_REQUESTS = {  # route, query, messages or threads found
    "message search": ("messages/search", {"q": SLOW_QUERY}, 0),
    "thread search": ("threads/search", {"q": SLOW_QUERY}, 0),
    # "ü" has no letters SQLite's own LIKE could rule rows out with: a Python lower() per row, which
    # takes the GIL the loop needs each time (db/text_match).
    "non-ASCII search": ("messages/search", {"q": "text " * 24 + "ü"}, 0),
    "filtered list": ("messages", {"subject": SLOW_SUBJECTS}, 11),
}
HEAD_START = 0.3  # seconds for the search to reach the server before the cheap request is sent


@pytest.mark.parametrize("slow", SLOW_REQUESTS)
def test_a_cheap_request_is_answered_while_a_scan_runs(
    fresh_server: Callable[..., ServerProcess], slow: str
) -> None:
    server = fresh_server("sqlite")
    server.start()
    headers = {"Authorization": f"Bearer {server.create_key()}"}
    route, params, found = SLOW_REQUESTS[slow]
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=60) as http:
        inbox_id = http.post("/v0/inboxes", json={"username": "scanned"}).json()["inbox_id"]
        seed_messages(server.data_dir / "agentmx.db", inbox_id, MESSAGES, "subject " * 40, "body text " * 40)

        scan: dict[str, Any] = {}

        def run_scan() -> None:
            with httpx.Client(base_url=server.base_url, headers=headers, timeout=60) as own:
                response = own.get(f"/v0/inboxes/{inbox_id}/{route}", params=params)
            scan["done"] = time.monotonic()
            scan["status"] = response.status_code
            scan["count"] = response.json()["count"]

        scanning = threading.Thread(target=run_scan)
        scanning.start()
        time.sleep(HEAD_START)
        sent = time.monotonic()
        assert http.get(f"/v0/inboxes/{inbox_id}").status_code == 200
        answered = time.monotonic()
        scanning.join()

    assert scan["status"] == 200 and scan["count"] == found
    assert answered < scan["done"], "the cheap request waited for the scan to end"
    assert answered - sent < 1.0
