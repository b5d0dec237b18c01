"""Trace fields an SMTP server prepends (RFC 5321 4.4): Return-Path and Received at final delivery,
Received alone for a submitted message."""

from __future__ import annotations

import re
import time
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
    source = f"{_clean(helo or 'unknown')} ([{_clean(str(ip))}])"
    # RFC 3848: ESMTPS names a session under STARTTLS (ESMTPSA: with AUTH too, submission_trace).
    received = _received(source, hostname, "ESMTPS" if tls else "ESMTP", tls, for_clause)
    # aiosmtpd gives the null reverse-path of a bounce (MAIL FROM:<>) as "<>": it is "<>" here too.
    path = "" if mail_from == "<>" else _clean(mail_from, 998)
    return f"Return-Path: <{path}>\r\n{received}".encode()


def submission_trace(helo: str | None, hostname: str, tls: str | None) -> bytes:
    """The Received field of a submitted message (RFC 6409 and 5321 4.4): ESMTPSA, TLS and AUTH.

    Without the client's address: it would tell every recipient where the agent runs.
    """
    return _received(_clean(helo or "unknown"), hostname, "ESMTPSA", tls, "").encode()


def _received(source: str, hostname: str, protocol: str, tls: str | None, for_clause: str) -> str:
    using = f"\t(using {_UNPRINTABLE.sub('', tls)[:255]})\r\n" if tls else ""  # which TLS, as Postfix says
    return (
        f"Received: from {source}\r\n"
        f"{using}\tby {_clean(hostname)} (agentmx) with {protocol}{for_clause};\r\n"
        f"\t{_date_now()}\r\n"
    )


_date: tuple[int, str] = (-1, "")  # (a second, its date as a field states it)


def _date_now() -> str:
    """The date of this second (RFC 5322 3.3), made once a second: every inbound message states it."""
    global _date
    second = int(time.time())
    if _date[0] != second:
        _date = (second, format_datetime(datetime.fromtimestamp(second, UTC)))
    return _date[1]
