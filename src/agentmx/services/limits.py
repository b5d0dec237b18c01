"""Caps on how many things one request may name. Past them a request buys no real use, only cost: a
row and a label-log event per label, a URL fetch per attachment, header bytes on every copy sent.
Each is a 400 naming the field, before any of that work."""

from __future__ import annotations

from collections.abc import Sized

from agentmx.errors import ValidationFailed

MAX_RECIPIENTS = 50  # to, cc and bcc of a message or draft together (AgentMail's)
MAX_LABELS = 100  # labels of a send, a draft or a message; add_labels and remove_labels of an update, each
MAX_HEADERS = 50  # custom header fields of a send
MAX_ATTACHMENTS = 50  # attachments of a send; of a draft, in all


def check_count(values: Sized | None, cap: int, path: str, what: str) -> None:
    if values is not None and len(values) > cap:
        message = f"at most {cap} {what}"
        raise ValidationFailed(f"{path}: {message}", [{"path": [path], "message": message}])
