"""A large mailbox, fast: messages written straight into a SQLite server's database."""

from __future__ import annotations

import sqlite3

from agentmx.testing.server import ServerProcess


def seed_messages(server: ServerProcess, inbox_id: str, count: int, subject: str, text: str) -> None:
    """``count`` messages in one thread of ``inbox_id``: subject ``subject`` followed by the message's
    number (1 to ``count``), body ``text``, labelled received."""
    conn = sqlite3.connect(server.data_dir / "agentmx.db", timeout=30)
    try:
        org, pod = conn.execute(
            "SELECT organization_id, pod_id FROM inboxes WHERE id = ?", (inbox_id,)
        ).fetchone()
        when = "2026-01-01 00:00:00.000000"
        with conn:
            conn.execute(
                "INSERT INTO threads (id, organization_id, pod_id, inbox_id, subject, preview, senders,"
                " recipients, message_count, size, timestamp, created_at, updated_at)"
                " VALUES ('thd_scan', ?, ?, ?, 'subject', 'preview', '[\"a@example.com\"]', ?, ?, 0, ?, ?, ?)",
                (org, pod, inbox_id, f'["{inbox_id}"]', count, when, when, when),
            )
            conn.execute(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
                " INSERT INTO messages (id, message_id, organization_id, pod_id, inbox_id, thread_id,"
                ' direction, timestamp, from_addr, "to", cc, bcc, reply_to, subject, preview, text,'
                ' "references", headers, size, created_at, updated_at)'
                " SELECT 'msg_scan' || i, '<scan' || i || '@example.com>', ?, ?, ?, 'thd_scan', 'inbound',"
                " ?, 'a@example.com', ?, '[]', '[]', '[]', ? || i, 'preview', ?, '[]', '{}',"
                " 100, ?, ? FROM n",
                (count, org, pod, inbox_id, when, f'["{inbox_id}"]', subject, text, when, when),
            )
            conn.execute(
                "INSERT INTO message_labels SELECT id, 'received' FROM messages WHERE thread_id = 'thd_scan'"
            )
    finally:
        conn.close()
