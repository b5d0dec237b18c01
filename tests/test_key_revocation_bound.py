"""A key removed behind a process's back (another process whose NOTIFY never came) stops working
within AGENTMX_CACHE_TTL, and, once a request has seen its entry past half that, sooner
(services/key_cache.py refreshes ahead)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

import httpx

from agentmx.services.keys import hash_secret
from agentmx.testing.server import ServerProcess

TTL = 6.0


def test_a_key_deleted_without_notice_is_refused_within_the_ttl(
    fresh_server: Callable[..., ServerProcess],
) -> None:
    server = fresh_server("sqlite", env={"AGENTMX_CACHE_TTL": str(TTL)}).start()
    secret = server.create_key()
    with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {secret}"}) as http:
        assert http.get("/v0/inboxes").status_code == 200
        cached_by = time.monotonic()  # the entry was fetched no later than this
        with sqlite3.connect(server.data_dir / "agentmx.db") as db:  # no NOTIFY: SQLite, another writer
            db.execute("DELETE FROM api_keys WHERE secret_hash = ?", (hash_secret(secret),))
        time.sleep(TTL * 0.55 - (time.monotonic() - cached_by))
        assert http.get("/v0/inboxes").status_code == 200  # past half the ttl: answered, reload started
        deadline = cached_by + TTL * 0.9
        while http.get("/v0/inboxes").status_code != 401:
            assert time.monotonic() < deadline, "the reload did not drop the deleted key's entry"
            time.sleep(0.05)
        time.sleep(max(0.0, cached_by + TTL - time.monotonic()))
        assert http.get("/v0/inboxes").status_code == 401  # the documented bound, whatever the above
