"""Feature registration (imported by agentmx.features at serve start-up)."""

from __future__ import annotations

from agentmx import server
from agentmx.db.models import PollingWebhook, Webhook
from agentmx.events import delivery, hub, retention
from agentmx.services import inboxes, pods, polling_webhooks, webhooks

__all__ = ["delivery"]  # imported for its @handler("deliver_webhook") registration

for service in (hub.start, retention.start):
    if service not in server.BACKGROUND:
        server.BACKGROUND.append(service)

for cleanup in (webhooks.forget_inbox, polling_webhooks.forget_inbox):
    if cleanup not in inboxes.inbox_cleanup:
        inboxes.inbox_cleanup.append(cleanup)
for pod_cleanup in (webhooks.forget_pod, polling_webhooks.forget_pod):
    if pod_cleanup not in pods.pod_cleanup:
        pods.pod_cleanup.append(pod_cleanup)

# A pod with webhooks of its own is not deleted from under them (409 cannot_delete).
for name, pod_column in (("webhooks", Webhook.pod_id), ("polling webhooks", PollingWebhook.pod_id)):
    if all(known != name for known, _ in pods.POD_DEPENDENTS):
        pods.POD_DEPENDENTS.append((name, pod_column))
