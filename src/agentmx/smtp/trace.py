"""Trace fields a final-delivery SMTP server prepends (RFC 5321 4.4): Return-Path and Received."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

_UNSAFE = re.compile(r"[^\x21-\x7e]")
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


def _clean(value: str, limit: int = 255) -> str:
    return _UNSAFE.sub("", value)[:limit]


def trace_headers(
    mail_from: str, helo: str | None, peer: Any, hostname: str, rcpts: list[str], tls: str | None = None
) -> bytes:
    """``tls``: the session's TLS (``smtp.tls.describe``), None if it was plain text."""
    ip = peer[0] if isinstance(peer, tuple) and peer else "unknown"
    for_clause = f"\r\n\tfor <{_clean(rcpts[0])}>" if len(rcpts) == 1 else ""
    # RFC 3848: ESMTPS names a session under STARTTLS; the comment says which TLS, as Postfix does.
    using = f"\t(using {_UNPRINTABLE.sub('', tls)[:255]})\r\n" if tls else ""
    received = (
        f"Received: from {_clean(helo or 'unknown')} ([{_clean(str(ip))}])\r\n"
        f"{using}\tby {_clean(hostname)} (agentmx) with ESMTP{'S' if tls else ''}{for_clause};\r\n"
        f"\t{format_datetime(datetime.now(UTC))}\r\n"
    )
    return f"Return-Path: <{_clean(mail_from, 998)}>\r\n{received}".encode()
