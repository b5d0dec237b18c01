"""Event subscriptions and their delivery record: webhooks, polling webhooks, webhook attempts, the inbox
label log."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from agentmx.db.base import Base
from agentmx.db.models.runtime import BigId
from agentmx.db.types import JSONType, UTCDateTime, utcnow


class Webhook(Base):
    """A URL that receives signed event POSTs. Owned by an organization, a pod or an inbox."""

    __tablename__ = "webhooks"
    __table_args__ = (
        Index("ix_webhooks_org", "organization_id", "created_at"),
        # The creating scope (org id, pod id or inbox id) keeps client_id idempotency per route.
        UniqueConstraint("owner_scope", "client_id", name="uq_webhooks_owner_client_id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # ep_…
    organization_id: Mapped[str] = mapped_column(String(64))
    pod_id: Mapped[str | None] = mapped_column(String(64))  # owner pod (pod-scoped webhooks)
    inbox_id: Mapped[str | None] = mapped_column(String(320))  # owner inbox (inbox-scoped webhooks)
    owner_scope: Mapped[str] = mapped_column(String(320))
    url: Mapped[str] = mapped_column(Text)
    # None = all standard event types (the filtered message.received.* variants excluded).
    event_types: Mapped[list[str] | None] = mapped_column(JSONType)
    pod_ids: Mapped[list[str]] = mapped_column(JSONType, default=list)
    inbox_ids: Mapped[list[str]] = mapped_column(JSONType, default=list)
    headers: Mapped[dict[str, str]] = mapped_column(JSONType, default=dict)  # write-only custom headers
    secret: Mapped[str] = mapped_column(String(128))  # whsec_…
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    client_id: Mapped[str | None] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class PollingWebhook(Base):
    """A subscription read with a bearer token (``GET /v0/webhooks/polling/events``) instead of pushed to a URL.

    Same owner, event types and channels as a ``Webhook``; it has no state of its own beyond the token:
    the reader keeps its place in the event log with the cursor each read returns.
    """

    __tablename__ = "polling_webhooks"
    __table_args__ = (
        Index("ix_polling_webhooks_owner", "owner_scope", "created_at"),
        Index("ix_polling_webhooks_org", "organization_id"),  # inbox deletion unlists the inbox
        UniqueConstraint("owner_scope", "client_id", name="uq_polling_webhooks_owner_client_id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # pw_…
    organization_id: Mapped[str] = mapped_column(String(64))
    pod_id: Mapped[str | None] = mapped_column(String(64))  # owner pod (pod- and inbox-scoped)
    inbox_id: Mapped[str | None] = mapped_column(String(320))  # owner inbox (inbox-scoped)
    owner_scope: Mapped[str] = mapped_column(String(320))  # org id, pod id or inbox id: limits, client_id
    event_types: Mapped[list[str]] = mapped_column(JSONType)
    pod_ids: Mapped[list[str]] = mapped_column(JSONType, default=list)
    inbox_ids: Mapped[list[str]] = mapped_column(JSONType, default=list)
    client_id: Mapped[str] = mapped_column(String(256))
    # sha256 of the current token; a repeat create replaces it, so the previous token stops working.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The organization's last event seq at creation: reads start after it.
    start_seq: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class WebhookAttempt(Base):
    """One HTTP attempt to deliver one event to one webhook (success or failure)."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (Index("ix_webhook_attempts_webhook", "webhook_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    webhook_id: Mapped[str] = mapped_column(String(64))
    event_id: Mapped[str] = mapped_column(String(64), index=True)
    svix_id: Mapped[str] = mapped_column(String(64))
    attempt: Mapped[int] = mapped_column(Integer)  # 0-based
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class InboxEvent(Base):
    """The label change log of an inbox. ``id`` is the monotonic event_id (IMAP UID projection)."""

    __tablename__ = "inbox_events"
    __table_args__ = (Index("ix_inbox_events_inbox", "inbox_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    organization_id: Mapped[str] = mapped_column(String(64))
    pod_id: Mapped[str] = mapped_column(String(64))
    inbox_id: Mapped[str] = mapped_column(String(320))
    event_type: Mapped[str] = mapped_column(String(32))  # label.added | label.removed
    message_id: Mapped[str] = mapped_column(String(998))
    label: Mapped[str] = mapped_column(String(256))
    event_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
