"""Small input rules shared by several services."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from agentmx.errors import ValidationFailed
from agentmx.mail.idn import to_ascii_domain

CLIENT_ID = re.compile(r"^[A-Za-z0-9._~-]{1,256}$")
USERNAME = re.compile(r"^[a-z0-9](?:[a-z0-9._+-]{0,62}[a-z0-9])?$")
DOMAIN = re.compile(r"^(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,61}[a-z0-9]$")


def fail(path: str, message: str) -> ValidationFailed:
    return ValidationFailed(message, [{"path": [path], "message": message}])


def one_line(value: str) -> bool:
    """Whether ``value`` holds none of the line breaks ``str.splitlines`` knows (U+2028 too): a header
    field's value. Not a count of its lines: a trailing break is one line, which the email package
    renders as is, and a bare LF or CR in the header becomes a CRLF on the wire that ends the header."""
    return "".join(value.splitlines()) == value


def utc_time(value: str) -> datetime:
    """An ISO-8601 time ("Z" allowed) in UTC; one without an offset is UTC. ValueError if it is
    none, or has no UTC equivalent (9999-12-31T23:00-05:00): converted where a statement binds it,
    that was a 500."""
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError(f"{value!r} has no UTC equivalent") from exc


def check_client_id(value: str | None, path: str = "client_id") -> str | None:
    if value is not None and not CLIENT_ID.fullmatch(value):  # match() let a final "\n" through
        raise fail(path, "client_id must be 1-256 characters of A-Z a-z 0-9 - . _ ~")
    return value


def check_domain_name(value: str, path: str = "domain") -> str:
    """The name as DNS holds it: lower case, no final dot, Unicode labels as their A-labels
    ("bücher.example" -> "xn--bcher-kva.example"), so one domain has one spelling."""
    name = to_ascii_domain(value)
    if name is None or not DOMAIN.match(name):
        raise fail(path, f"'{value}' is not a valid domain name")
    return name


def split_address(address: str) -> tuple[str, str]:
    local, sep, domain = address.strip().lower().rpartition("@")
    if not sep or not local or not domain:
        raise fail("inbox_id", f"'{address}' is not an email address")
    return local, domain
