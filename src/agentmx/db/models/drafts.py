"""Drafts: unsent messages in one inbox, optionally scheduled, with their labels and attachments."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from agentmx.db.base import Base
from agentmx.db.types import JSONType, UTCDateTime, utcnow


class Draft(Base):
    """A draft's kind (plain, reply, forward) is fixed at creation by in_reply_to / forward_of."""

    __tablename__ = "drafts"
    __table_args__ = (
        UniqueConstraint("inbox_id", "client_id", name="uq_drafts_inbox_client_id"),
        Index("ix_drafts_inbox_updated", "inbox_id", "updated_at", "id"),
        Index("ix_drafts_org_updated", "organization_id", "updated_at", "id"),
        Index("ix_drafts_pod_updated", "pod_id", "updated_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # drf_…
    organization_id: Mapped[str] = mapped_column(String(64))
    pod_id: Mapped[str] = mapped_column(String(64))
    inbox_id: Mapped[str] = mapped_column(ForeignKey("inboxes.id", ondelete="CASCADE"))
    client_id: Mapped[str | None] = mapped_column(String(256))
    reply_to: Mapped[list[str]] = mapped_column(JSONType, default=list)
    to: Mapped[list[str]] = mapped_column(JSONType, default=list)
    cc: Mapped[list[str]] = mapped_column(JSONType, default=list)
    bcc: Mapped[list[str]] = mapped_column(JSONType, default=list)
    subject: Mapped[str | None] = mapped_column(Text)
    text: Mapped[str | None] = mapped_column(Text)
    html: Mapped[str | None] = mapped_column(Text)
    preview: Mapped[str | None] = mapped_column(Text)
    # Reply / forward source (RFC Message-ID with <>) and the threading derived from it.
    in_reply_to: Mapped[str | None] = mapped_column(String(998))
    forward_of: Mapped[str | None] = mapped_column(String(998))
    reply_all: Mapped[bool] = mapped_column(Boolean, default=False)
    references: Mapped[list[str]] = mapped_column(JSONType, default=list)
    thread_id: Mapped[str | None] = mapped_column(String(64))
    # None | scheduled | sending | failed
    send_status: Mapped[str | None] = mapped_column(String(16))
    send_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    labels: Mapped[list[DraftLabel]] = relationship(
        cascade="all, delete-orphan", lazy="selectin", order_by="DraftLabel.label"
    )
    attachments: Mapped[list[DraftAttachment]] = relationship(
        cascade="all, delete-orphan", lazy="selectin", order_by="DraftAttachment.position"
    )

    @property
    def label_names(self) -> list[str]:
        return [label.label for label in self.labels]


class DraftLabel(Base):
    """A table (not JSON) so list filters on labels use an index on both databases."""

    __tablename__ = "draft_labels"
    __table_args__ = (Index("ix_draft_labels_label", "label", "draft_pk"),)

    draft_pk: Mapped[str] = mapped_column(ForeignKey("drafts.id", ondelete="CASCADE"), primary_key=True)
    label: Mapped[str] = mapped_column(String(256), primary_key=True)


class DraftAttachment(Base):
    """Attachment bytes live in the blob store under ``blob_key``."""

    __tablename__ = "draft_attachments"
    __table_args__ = (Index("ix_draft_attachments_blob_key", "blob_key"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # att_…
    draft_pk: Mapped[str] = mapped_column(ForeignKey("drafts.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer, default=0)
    filename: Mapped[str | None] = mapped_column(Text)
    content_type: Mapped[str | None] = mapped_column(String(256))
    content_disposition: Mapped[str | None] = mapped_column(String(16))  # inline | attachment
    content_id: Mapped[str | None] = mapped_column(String(998))
    size: Mapped[int] = mapped_column(Integer, default=0)
    blob_key: Mapped[str] = mapped_column(String(256))
