"""The durable job queue and the event log: side effects are rows first, work second."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from agentmx.db.base import Base
from agentmx.db.types import JSONType, UTCDateTime, utcnow

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL wants BIGINT for long-lived logs.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Job(Base):
    """A unit of deferred work (outbound delivery, webhook attempt, scheduled send, DNS check)."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_due", "run_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    # Jobs with a key are unique: re-enqueueing replaces nothing and adds nothing.
    key: Mapped[str | None] = mapped_column(String(256), unique=True)
    run_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    locked_by: Mapped[str | None] = mapped_column(String(64))
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Event(Base):
    """The durable, ordered event log. Written in the same transaction as the fact it reports."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_org_seq", "organization_id", "seq"),)

    seq: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(64), unique=True)
    event_type: Mapped[str] = mapped_column(String(64), index=True)
    organization_id: Mapped[str] = mapped_column(String(64))
    pod_id: Mapped[str | None] = mapped_column(String(64))
    inbox_id: Mapped[str | None] = mapped_column(String(320), index=True)
    # The exact wire body (webhook POST body and WebSocket frame).
    body: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class ServerState(Base):
    """Small server-wide values shared by every process on the database (e.g. the signing secret)."""

    __tablename__ = "server_state"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
