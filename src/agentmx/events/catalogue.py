"""Event types, the default subscription set and who may subscribe to what (API.md 3.1)."""

from __future__ import annotations

from agentmx.errors import Forbidden, ValidationFailed
from agentmx.services.caller import Caller

# Subscribable standard types, in catalogue order.
EVENT_TYPES: tuple[str, ...] = (
    "message.received",
    "message.received.spam",
    "message.received.blocked",
    "message.received.unauthenticated",
    "message.sent",
    "message.delivered",
    "message.bounced",
    "message.complained",
    "message.rejected",
    "message.opened",
    "domain.verified",
)

# Variants that must be listed explicitly and need a label-read permission.
FILTERED: dict[str, str] = {
    "message.received.spam": "label_spam_read",
    "message.received.blocked": "label_blocked_read",
    "message.received.unauthenticated": "label_unauthenticated_read",
}

DEFAULT_TYPES: frozenset[str] = frozenset(t for t in EVENT_TYPES if t not in FILTERED)


def read_permission(event_type: str) -> str:
    """The read permission an event type's body needs: a subscription hands its events over."""
    return "domain_read" if event_type.startswith("domain.") else "message_read"


def _missing(permission: str) -> Forbidden:
    return Forbidden(
        f"{permission} is forbidden",
        code="missing_permission",
        fix=f"This API key does not have the '{permission}' permission the requested events need.",
    )


def check_event_types(
    caller: Caller, event_types: list[str] | None, path: str = "event_types"
) -> list[str] | None:
    """Validate a requested type list: known names, label and read permissions (a key lacking
    message_read must not read mail through a webhook it made). None stays None (= default set)
    when the caller may read all of it, else it becomes the readable part, as on the WebSocket."""
    if event_types is None:
        readable = [t for t in EVENT_TYPES if t in DEFAULT_TYPES and caller.can(read_permission(t))]
        if not readable:
            raise _missing("message_read")
        return None if len(readable) == len(DEFAULT_TYPES) else readable
    out: list[str] = []
    for name in event_types:
        if name not in EVENT_TYPES:
            raise ValidationFailed(
                f"{path}: unknown event type {name!r}",
                [{"path": [path], "message": f"unknown event type {name!r}"}],
            )
        if name not in out:
            out.append(name)
    for name in out:
        for permission in (FILTERED.get(name), read_permission(name)):
            if permission and not caller.can(permission):
                raise _missing(permission)
    return out


def effective_types(event_types: list[str] | None) -> frozenset[str]:
    return DEFAULT_TYPES if event_types is None else frozenset(event_types)
