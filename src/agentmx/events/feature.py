"""Feature registration (imported by agentmx.features at serve start-up)."""

from __future__ import annotations

from agentmx import server
from agentmx.db.models import Webhook
from agentmx.events import delivery, hub, retention
from agentmx.services import inboxes, pods, webhooks

__all__ = ["delivery"]  # imported for its @handler("deliver_webhook") registration

for service in (hub.start, retention.start):
    if service not in server.BACKGROUND:
        server.BACKGROUND.append(service)

if webhooks.forget_inbox not in inboxes.inbox_cleanup:
    inboxes.inbox_cleanup.append(webhooks.forget_inbox)
if webhooks.forget_pod not in pods.pod_cleanup:
    pods.pod_cleanup.append(webhooks.forget_pod)

# A pod with webhooks of its own is not deleted from under them (409 cannot_delete).
if all(name != "webhooks" for name, _ in pods.POD_DEPENDENTS):
    pods.POD_DEPENDENTS.append(("webhooks", Webhook.pod_id))
