"""Extracted bodies are stored only where they differ from the body itself, stripped.

``extracted_text``/``extracted_html`` hold a message's new content without its quoted history.
Mail that quotes nothing extracts to its own body, stripped (``mail/quotes``), and storing that
copy too cost SQLite about one more 4 KB page per 4 KB message. So NULL in those columns means
"the body, stripped"; a NULL body has a NULL extract either way. Rows stored with the copy read
the same. Every read goes through ``from_storage`` (``http/wire_mail.message_document``).
"""

from __future__ import annotations


def for_storage(extract: str | None, body: str | None) -> str | None:
    """What to store for ``extract`` (the parse never gives a NULL extract of a body)."""
    return None if body is not None and extract == body.strip() else extract


def from_storage(stored: str | None, body: str | None) -> str | None:
    return body.strip() if stored is None and body is not None else stored
