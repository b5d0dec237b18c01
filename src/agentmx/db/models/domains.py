"""Custom domains: names an organization proves it controls, with the DKIM key its mail is signed with."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from agentmx.db.base import Base
from agentmx.db.types import JSONType, UTCDateTime, utcnow


class Domain(Base):
    __tablename__ = "domains"
    __table_args__ = (
        UniqueConstraint("organization_id", "client_id", name="uq_domains_org_client"),
        Index("ix_domains_org_created", "organization_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    # NULL = shared by every pod of the organization.
    pod_id: Mapped[str | None] = mapped_column(ForeignKey("pods.id"), index=True)
    # Lower-case name without trailing dot; one owner per name, since inbox addresses are global.
    name: Mapped[str] = mapped_column(String(253), unique=True)
    client_id: Mapped[str | None] = mapped_column(String(256))
    feedback_enabled: Mapped[bool] = mapped_column(default=True)
    inbound_enabled: Mapped[bool] = mapped_column(default=True)
    subdomains_enabled: Mapped[bool] = mapped_column(default=False)
    tracking_enabled: Mapped[bool] = mapped_column(default=False)
    status: Mapped[str] = mapped_column(String(16), default="NOT_STARTED")
    reason: Mapped[str | None] = mapped_column(String(64))
    # Outcome of the last DNS check: [{type, name, value, status, reason?}], matched to records by key.
    checks: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    dkim_selector: Mapped[str] = mapped_column(String(63))
    # Base64 SubjectPublicKeyInfo, as published in the DKIM TXT record.
    dkim_public_key: Mapped[str] = mapped_column(Text)
    # Fernet token of the PEM private key (key derived from the server secret); never returned.
    dkim_private_key: Mapped[str] = mapped_column(Text)
    checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # First time every record checked out; sending keeps working while later re-checks converge.
    verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
