"""All tables. Each feature keeps its tables in its own module; importing this registers them all."""

from agentmx.db.models.core import ApiKey, Inbox, Organization, Pod
from agentmx.db.models.domains import Domain
from agentmx.db.models.drafts import Draft, DraftAttachment, DraftLabel
from agentmx.db.models.events import InboxEvent, PollingWebhook, Webhook, WebhookAttempt
from agentmx.db.models.lists import ListEntry
from agentmx.db.models.mail import (
    Attachment,
    BlobCandidate,
    IdempotencyRecord,
    InlineBlob,
    Message,
    MessageLabel,
    OutboundRecipient,
    Thread,
    UnmatchedReference,
)
from agentmx.db.models.runtime import Event, Job, ServerState

__all__ = [
    "ApiKey",
    "Attachment",
    "BlobCandidate",
    "Domain",
    "Draft",
    "DraftAttachment",
    "DraftLabel",
    "Event",
    "IdempotencyRecord",
    "InboxEvent",
    "InlineBlob",
    "Inbox",
    "Job",
    "ListEntry",
    "Message",
    "MessageLabel",
    "Organization",
    "OutboundRecipient",
    "Pod",
    "PollingWebhook",
    "ServerState",
    "Thread",
    "UnmatchedReference",
    "Webhook",
    "WebhookAttempt",
]
