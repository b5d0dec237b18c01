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


def check_event_types(
    caller: Caller, event_types: list[str] | None, path: str = "event_types"
) -> list[str] | None:
    """Validate a requested type list: known names, label permissions. None stays None (= default set)."""
    if event_types is None:
        return None
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
        permission = FILTERED.get(name)
        if permission and not caller.can(permission):
            raise Forbidden(f"{permission} is forbidden", code="missing_permission")
    return out


def effective_types(event_types: list[str] | None) -> frozenset[str]:
    return DEFAULT_TYPES if event_types is None else frozenset(event_types)
