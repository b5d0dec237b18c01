"""SQLite: a search for non-ASCII text costs about what a search for ASCII text does.

SQLite's lower() and LIKE fold ASCII letters only, so text with other letters was compared through a
Python lower() called for every row scanned: over 3x the CPU of an ASCII search, with the GIL taken
for each row. Now SQLite's LIKE decides where it gives the same matches (uncased scripts such as CJK),
and for cased text rules out the rows without the text's other letters first (db/text_match).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import httpx

from agentmx.testing.server import ServerProcess
from scan_support import seed_messages

MESSAGES = 30_000
SUBJECT = "Rechnung für März, Nummer "
TEXT = "Hallo Jürgen, anbei die Rechnung für März. " + "body text of an ordinary message " * 20
QUERIES = {"ascii": "transfer", "cased": "überweisung", "uncased": "会议"}  # none found
ROUNDS = 3
LIMIT = 2.0  # times an ASCII search's CPU; it was 3 and more


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_non_ascii_search_costs_about_as_much_cpu_as_an_ascii_one(
    fresh_server: Callable[..., ServerProcess],
) -> None:
    server = fresh_server("sqlite")
    server.start()
    assert server.proc is not None
    headers = {"Authorization": f"Bearer {server.create_key()}"}
    cpu = dict.fromkeys(QUERIES, 0.0)
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=60) as http:
        inbox_id = http.post("/v0/inboxes", json={"username": "costed"}).json()["inbox_id"]
        seed_messages(server, inbox_id, MESSAGES, SUBJECT, TEXT)
        for _ in range(ROUNDS):  # alternated, so a busy moment of the machine falls on all of them
            for name, q in QUERIES.items():
                before = _cpu_seconds(server.proc.pid)
                found = http.get(f"/v0/inboxes/{inbox_id}/messages/search", params={"q": q})
                cpu[name] += _cpu_seconds(server.proc.pid) - before
                assert found.status_code == 200 and found.json()["count"] == 0

    assert cpu["cased"] < LIMIT * cpu["ascii"], cpu
    assert cpu["uncased"] < LIMIT * cpu["ascii"], cpu
