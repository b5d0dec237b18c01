"""Feature registration (imported by agentmx.features at serve start-up)."""

from __future__ import annotations

from agentmx import server
from agentmx.events import delivery, hub

__all__ = ["delivery"]  # imported for its @handler("deliver_webhook") registration

if hub.start not in server.BACKGROUND:
    server.BACKGROUND.append(hub.start)
