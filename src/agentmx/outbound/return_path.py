"""The envelope sender of outbound mail: ``bounces+<message pk>@<inbox domain>`` (VERP), so a DSN
names the message it reports on."""

from __future__ import annotations

PREFIX = "bounces+"


def make(message_pk: str, domain: str) -> str:
    return f"{PREFIX}{message_pk}@{domain}"


def message_pk(address: str) -> str | None:
    """The message pk in a return-path address, or None when the address is not one of ours."""
    local, _, domain = address.strip().strip("<>").rpartition("@")
    if not domain or not local.lower().startswith(PREFIX):
        return None
    pk = local[len(PREFIX) :]
    return pk or None
