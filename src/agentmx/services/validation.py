"""Small input rules shared by several services."""

from __future__ import annotations

import re

from agentmx.errors import ValidationFailed

CLIENT_ID = re.compile(r"^[A-Za-z0-9._~-]{1,256}$")
USERNAME = re.compile(r"^[a-z0-9](?:[a-z0-9._+-]{0,62}[a-z0-9])?$")
DOMAIN = re.compile(r"^(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,61}[a-z0-9]$")


def fail(path: str, message: str) -> ValidationFailed:
    return ValidationFailed(message, [{"path": [path], "message": message}])


def check_client_id(value: str | None, path: str = "client_id") -> str | None:
    if value is not None and not CLIENT_ID.match(value):
        raise fail(path, "client_id must be 1-256 characters of A-Z a-z 0-9 - . _ ~")
    return value


def check_domain_name(value: str, path: str = "domain") -> str:
    name = value.strip().lower().rstrip(".")
    if not DOMAIN.match(name):
        raise fail(path, f"'{value}' is not a valid domain name")
    return name


def split_address(address: str) -> tuple[str, str]:
    local, sep, domain = address.strip().lower().rpartition("@")
    if not sep or not local or not domain:
        raise fail("inbox_id", f"'{address}' is not an email address")
    return local, domain
