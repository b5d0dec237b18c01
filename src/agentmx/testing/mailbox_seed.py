"""A large mailbox, fast: messages written straight into a SQLite server's database (tests, benches)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

WHEN = "2026-01-01 00:00:00.000000"


def seed_messages(
    database: Path,
    inbox_id: str,
    count: int,
    subject: str,
    text: str,
    *,
    sender: str = "a@example.com",
    marked_subject: str = "",
    mark_every: int = 0,
) -> None:
    """``count`` messages in one thread (``thd_scan``) of ``inbox_id``, labelled received: message i
    (1 to ``count``) has Message-ID ``<scan{i}@example.com>``, body ``text``, and subject ``subject``
    followed by i, or ``marked_subject`` followed by i when ``mark_every`` and i % mark_every == 7."""
    conn = sqlite3.connect(database, timeout=30)
    try:
        org, pod = conn.execute(
            "SELECT organization_id, pod_id FROM inboxes WHERE id = ?", (inbox_id,)
        ).fetchone()
        with conn:
            conn.execute(
                "INSERT INTO threads (id, organization_id, pod_id, inbox_id, subject, preview, senders,"
                " recipients, message_count, size, timestamp, created_at, updated_at)"
                " VALUES ('thd_scan', ?, ?, ?, 'subject', 'preview', '[\"a@example.com\"]', ?, ?, 0, ?, ?, ?)",
                (org, pod, inbox_id, f'["{inbox_id}"]', count, WHEN, WHEN, WHEN),
            )
            conn.execute(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
                " INSERT INTO messages (id, message_id, organization_id, pod_id, inbox_id, thread_id,"
                ' direction, timestamp, from_addr, "to", cc, bcc, reply_to, subject, preview, text,'
                ' "references", headers, size, created_at, updated_at)'
                " SELECT 'msg_scan' || i, '<scan' || i || '@example.com>', ?, ?, ?, 'thd_scan', 'inbound',"
                " ?, ?, ?, '[]', '[]', '[]', CASE WHEN ? AND i % ? = 7 THEN ? ELSE ? END || i,"
                " 'preview', ?, '[]', '{}', 100, ?, ? FROM n",
                (count, org, pod, inbox_id, WHEN, sender, f'["{inbox_id}"]', mark_every, max(mark_every, 1),
                 marked_subject, subject, text, WHEN, WHEN),
            )  # fmt: skip
            conn.execute(
                "INSERT INTO message_labels SELECT id, 'received' FROM messages WHERE thread_id = 'thd_scan'"
            )
    finally:
        conn.close()
