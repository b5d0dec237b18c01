"""Allow/block list entries: {send, receive, reply} x {allow, block} at org, pod or inbox scope."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from agentmx.db.base import Base
from agentmx.db.types import UTCDateTime, utcnow


class ListEntry(Base):
    __tablename__ = "list_entries"
    __table_args__ = (
        # scope_id = inbox_id, else pod_id, else organization_id: one non-null key per scope,
        # so uniqueness works on every backend without NULL-aware constraints.
        UniqueConstraint("scope_id", "direction", "list_type", "entry", name="uq_list_entries_scope_entry"),
        Index("ix_list_entries_org_lookup", "organization_id", "direction", "entry"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    organization_id: Mapped[str] = mapped_column(String(64))
    pod_id: Mapped[str | None] = mapped_column(String(64))
    inbox_id: Mapped[str | None] = mapped_column(String(320))
    scope_id: Mapped[str] = mapped_column(String(320))
    direction: Mapped[str] = mapped_column(String(16))  # send | receive | reply
    list_type: Mapped[str] = mapped_column(String(16))  # allow | block
    entry: Mapped[str] = mapped_column(String(320))  # lower-cased address or domain
    entry_type: Mapped[str] = mapped_column(String(16))  # email | domain
    reason: Mapped[str | None] = mapped_column(Text)
    read_only: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
