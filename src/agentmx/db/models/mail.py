"""Mail: threads, messages, their labels and attachments, outbound recipients, idempotency."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from agentmx.db.base import Base
from agentmx.db.models.runtime import BigId
from agentmx.db.types import JSONType, UTCDateTime, utcnow


class Thread(Base):
    """A conversation in one inbox. Aggregates are kept up to date as messages join."""

    __tablename__ = "threads"
    __table_args__ = (
        Index("ix_threads_inbox_ts", "inbox_id", "timestamp", "id"),
        Index("ix_threads_org_ts", "organization_id", "timestamp", "id"),
        Index("ix_threads_pod_ts", "pod_id", "timestamp", "id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # thd_…
    organization_id: Mapped[str] = mapped_column(String(64))
    pod_id: Mapped[str] = mapped_column(String(64))
    inbox_id: Mapped[str] = mapped_column(ForeignKey("inboxes.id", ondelete="CASCADE"))
    subject: Mapped[str | None] = mapped_column(Text)
    preview: Mapped[str | None] = mapped_column(Text)
    senders: Mapped[list[str]] = mapped_column(JSONType, default=list)
    recipients: Mapped[list[str]] = mapped_column(JSONType, default=list)
    last_message_id: Mapped[str | None] = mapped_column(String(998))
    message_count: Mapped[int] = mapped_column(Integer, default=0)
    size: Mapped[int] = mapped_column(Integer, default=0)
    timestamp: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    received_timestamp: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sent_timestamp: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Message(Base):
    """One copy of a message in one inbox (the same mail to two local inboxes is two rows)."""

    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("inbox_id", "message_id", name="uq_messages_inbox_message_id"),
        Index("ix_messages_inbox_ts", "inbox_id", "timestamp", "id"),
        Index("ix_messages_thread_ts", "thread_id", "timestamp", "id"),
        Index("ix_messages_blob_key", "blob_key"),  # is a blob still named? (services/blob_gc)
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # internal msg_… key
    message_id: Mapped[str] = mapped_column(String(998))  # RFC 5322 Message-ID, with <>
    organization_id: Mapped[str] = mapped_column(String(64))
    pod_id: Mapped[str] = mapped_column(String(64))
    inbox_id: Mapped[str] = mapped_column(ForeignKey("inboxes.id", ondelete="CASCADE"))
    thread_id: Mapped[str] = mapped_column(ForeignKey("threads.id", ondelete="CASCADE"))
    direction: Mapped[str] = mapped_column(String(8))  # "inbound" | "outbound"
    timestamp: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    from_: Mapped[str] = mapped_column("from_addr", Text, default="")
    to: Mapped[list[str]] = mapped_column(JSONType, default=list)
    cc: Mapped[list[str]] = mapped_column(JSONType, default=list)
    bcc: Mapped[list[str]] = mapped_column(JSONType, default=list)
    reply_to: Mapped[list[str]] = mapped_column(JSONType, default=list)
    subject: Mapped[str | None] = mapped_column(Text)
    preview: Mapped[str | None] = mapped_column(Text)
    text: Mapped[str | None] = mapped_column(Text)
    html: Mapped[str | None] = mapped_column(Text)
    # NULL where the extract is the body itself, stripped (mail/stored_extracts).
    extracted_text: Mapped[str | None] = mapped_column(Text)
    extracted_html: Mapped[str | None] = mapped_column(Text)
    in_reply_to: Mapped[str | None] = mapped_column(String(998))
    references: Mapped[list[str]] = mapped_column(JSONType, default=list)
    headers: Mapped[dict[str, str]] = mapped_column(JSONType, default=dict)
    size: Mapped[int] = mapped_column(Integer, default=0)
    blob_key: Mapped[str | None] = mapped_column(String(256))  # raw .eml in the blob store
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    labels: Mapped[list[MessageLabel]] = relationship(
        cascade="all, delete-orphan", lazy="selectin", order_by="MessageLabel.label"
    )
    attachments: Mapped[list[Attachment]] = relationship(
        cascade="all, delete-orphan", lazy="selectin", order_by="Attachment.position"
    )

    @property
    def label_names(self) -> list[str]:
        return [label.label for label in self.labels]


class MessageLabel(Base):
    """Labels live in their own table so lists can filter on them with an index on both databases."""

    __tablename__ = "message_labels"
    __table_args__ = (Index("ix_message_labels_label", "label", "message_pk"),)

    message_pk: Mapped[str] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True)
    label: Mapped[str] = mapped_column(String(256), primary_key=True)


class UnmatchedReference(Base):
    """A Message-ID named by a message's In-Reply-To/References that its inbox did not have when the
    message was stored (none of them was there): the original, arriving later, joins its thread.

    Written only for messages that found none of the ids they reference (a reply that found one is in
    that conversation already), so a reply to a known message writes no row.
    """

    __tablename__ = "unmatched_references"
    # Deleting a message deletes its rows (the foreign key's cascade looks them up by message_pk).
    __table_args__ = (Index("ix_unmatched_references_message", "message_pk"),)

    inbox_id: Mapped[str] = mapped_column(String(320), primary_key=True)
    message_id: Mapped[str] = mapped_column(String(998), primary_key=True)  # the referenced one
    message_pk: Mapped[str] = mapped_column(  # the referencing message
        ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True
    )


class Attachment(Base):
    __tablename__ = "attachments"
    __table_args__ = (Index("ix_attachments_blob_key", "blob_key"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # att_…, unique server-wide
    message_pk: Mapped[str] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer, default=0)
    filename: Mapped[str | None] = mapped_column(Text)
    content_type: Mapped[str | None] = mapped_column(String(256))
    content_disposition: Mapped[str | None] = mapped_column(String(16))  # inline | attachment
    content_id: Mapped[str | None] = mapped_column(String(998))
    size: Mapped[int] = mapped_column(Integer, default=0)
    blob_key: Mapped[str] = mapped_column(String(256))


class InlineBlob(Base):
    """The bytes of a small blob (raw .eml, attachment), keyed like the file store by SHA-256.

    Written in the transaction that stores the rows naming it: no file, no fsync of its own.
    """

    __tablename__ = "inline_blobs"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    # Unix time of the last transaction that stored these bytes (again): a blob that lost its last
    # row is deleted only once this is older than blob_gc_delay, so a transaction naming it anew is safe.
    touched_at: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class BlobCandidate(Base):
    """A blob key whose naming row (message, attachment, draft attachment) was deleted.

    Written by database triggers on those tables (migration 0008), so every way of deleting them,
    cascades included, leaves its keys here; ``services/blob_gc`` deletes the bytes no row names.
    """

    __tablename__ = "blob_candidates"

    key: Mapped[str] = mapped_column(String(256), primary_key=True)


class OutboundRecipient(Base):
    """Delivery state of one outbound message to one external recipient."""

    __tablename__ = "outbound_recipients"
    __table_args__ = (Index("ix_outbound_recipients_message", "message_pk"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    message_pk: Mapped[str] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    address: Mapped[str] = mapped_column(String(320))
    # queued | delivered | deferred | bounced | local
    status: Mapped[str] = mapped_column(String(16), default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_code: Mapped[int | None] = mapped_column(Integer)
    last_response: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class IdempotencyRecord(Base):
    """Idempotency-Key on sends: one row per (organization, key), expiring 24 h after completion."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("organization_id", "key", name="uq_idempotency_org_key"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    organization_id: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(256))
    request_hash: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))  # in_flight | done
    response: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
