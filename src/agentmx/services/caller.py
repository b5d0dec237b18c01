"""Who is calling: the API key's organization, scope and permissions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from agentmx.errors import Forbidden, NotFound

ScopeType = Literal["organization", "pod", "inbox"]

# Permissions that are never implied by an unrestricted key.
OPT_IN_PERMISSIONS = frozenset({"agent_armor_release", "app_connect"})


@dataclass(frozen=True)
class Caller:
    organization_id: str
    api_key_id: str | None = None
    pod_id: str | None = None
    inbox_id: str | None = None
    permissions: dict[str, bool] | None = field(default=None, hash=False)

    @property
    def scope_type(self) -> ScopeType:
        if self.inbox_id:
            return "inbox"
        if self.pod_id:
            return "pod"
        return "organization"

    @property
    def unrestricted(self) -> bool:
        return self.permissions is None

    def can(self, permission: str) -> bool:
        if self.permissions is None:
            return permission not in OPT_IN_PERMISSIONS
        return bool(self.permissions.get(permission))

    def require(self, permission: str) -> None:
        if not self.can(permission):
            raise Forbidden(
                "Forbidden",
                code="missing_permission",
                fix=f"This API key does not have the '{permission}' permission. "
                "Use a key that grants it, or add it to this key's permissions.",
            )

    def require_org(self) -> None:
        """Organization-level routes need an organization-scoped key."""
        if self.pod_id or self.inbox_id:
            raise Forbidden("Forbidden", fix="This route needs an organization-scoped API key.")

    def require_pod_access(self, pod_id: str) -> None:
        """Pod routes: an inbox key is refused (403); another pod is invisible (404)."""
        if self.inbox_id:
            raise Forbidden("Forbidden", fix="Inbox-scoped API keys cannot use pod routes.")
        if self.pod_id and self.pod_id != pod_id:
            raise NotFound("Pod not found")

    def sees_pod(self, pod_id: str) -> bool:
        return self.pod_id is None or self.pod_id == pod_id

    def sees_inbox(self, inbox_id: str, pod_id: str) -> bool:
        if self.inbox_id is not None and self.inbox_id != inbox_id:
            return False
        return self.sees_pod(pod_id)
