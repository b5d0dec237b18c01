"""The envelope sender of outbound mail, one per recipient (VERP): ``bounces+<message pk>-<tag>@<inbox domain>``.

A report to it (a DSN, an ARF complaint) concerns that message and, through ``tag`` (an HMAC of the
message and the recipient under the server secret), that one recipient. A recipient sees only its own
return path, so it cannot report a co-recipient as bounced: the report counts for the recipient the
address was made for, whatever the report says.

Local deliveries carry the untagged form ``bounces+<message pk>@domain``; so did every message before
tags. A report to an untagged return path counts only for a message with one remote recipient (the one
who could have seen it), so it can harm nobody else.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from agentmx.services import secrets

PREFIX = "bounces+"
TAG_LENGTH = 16  # hex digits: 64 bits, and the local part stays within 64 characters (RFC 5321 4.5.3.1.1)


@dataclass(frozen=True)
class ReturnPath:
    message_pk: str
    tag: str | None  # None: the untagged form


def _tag(secret: bytes, message_pk: str, recipient: str) -> str:
    return secrets.sign(secret, f"return-path\0{message_pk}\0{recipient.strip().lower()}")[:TAG_LENGTH]


def make(message_pk: str, domain: str, secret: bytes | None = None, recipient: str | None = None) -> str:
    """The return path for ``recipient`` (both ``secret`` and ``recipient`` given), else the untagged one."""
    if secret is None or recipient is None:
        return f"{PREFIX}{message_pk}@{domain}"
    return f"{PREFIX}{message_pk}-{_tag(secret, message_pk, recipient)}@{domain}"


def parse(address: str) -> ReturnPath | None:
    """The message and tag in a return-path address, or None when the address is not one of ours."""
    local, _, domain = address.strip().strip("<>").rpartition("@")
    if not domain or not local.lower().startswith(PREFIX):
        return None
    # Ids and tags are lower case; a relay may have changed that (a local part's case is the host's to keep).
    pk, dash, tag = local[len(PREFIX) :].lower().partition("-")
    if not pk:
        return None
    return ReturnPath(pk, tag if dash else None)


def recipient(secret: bytes, path: ReturnPath, candidates: Iterable[str]) -> str | None:
    """Which of the message's ``candidates`` (its remote recipients) ``path`` speaks for, if any."""
    candidates = list(candidates)
    if path.tag is None:
        return candidates[0] if len(candidates) == 1 else None
    for address in candidates:
        if hmac.compare_digest(
            _tag(secret, path.message_pk, address).encode(), path.tag.encode("utf-8", "replace")
        ):
            return address
    return None
