"""The tables of the dsguard store (SQLAlchemy 2 typed ORM), shared by SQLite and PostgreSQL.

The schema is created by the Alembic migrations in ``dsguard/store/migrations``, never by
``metadata.create_all``; a test compares these models with the migrated schema so the two
cannot drift apart.

Layout, and why:

- ``quarantine`` holds one row per held message: the few values the list page shows and
  filters on, plus the findings and IOCs as JSON. The raw message lives apart in
  ``quarantine_blob`` so list queries never touch megabytes of mail, and deleting a message
  removes its bytes while the ``quarantine`` row stays as a tombstone for the audit trail.
- ``quarantine_recipient`` and ``quarantine_finding`` are index tables: "messages for
  joe@contoso.com" and "messages with finding X" are indexed look-ups instead of scans of
  JSON columns (which SQLite and PostgreSQL cannot index the same way).
- ``event`` is append-only: one row per decision of a front door (gateway, policyd, milter).
- ``audit`` records who released or deleted what.
- ``account`` holds SMTP AUTH users of the gateway and admin users of the web UI
  (``user`` is a reserved word in PostgreSQL).

Every timestamp is a :class:`UtcDateTime`: stored as UTC, returned timezone-aware.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import DateTime, TypeDecorator

# Stable constraint/index names on both backends, so later migrations can refer to them.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments an ``INTEGER PRIMARY KEY`` column (a rowid alias), not BIGINT.
AutoId = BigInteger().with_variant(Integer(), "sqlite")


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp that is always UTC and timezone-aware on the Python side.

    SQLite has no timezone type: SQLAlchemy stores ``YYYY-MM-DD HH:MM:SS.ffffff`` text and
    drops the offset, so values are converted to UTC before they are written (the fixed-width
    text then sorts chronologically, which the keyset pagination relies on). PostgreSQL
    returns ``timestamptz`` in the session time zone; it is converted back to UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: dsguard stores timezone-aware UTC only")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Quarantine(Base):
    __tablename__ = "quarantine"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # uuid4 hex
    received_at: Mapped[datetime] = mapped_column(UtcDateTime())
    status: Mapped[str] = mapped_column(String(16))  # held | released | deleted
    status_changed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    status_changed_by: Mapped[str | None] = mapped_column(Text)
    mail_from: Mapped[str] = mapped_column(Text)  # "" for the null reverse-path <>
    header_from: Mapped[str | None] = mapped_column(Text)
    rcpt_to: Mapped[list[str]] = mapped_column(JSON)
    client_ip: Mapped[str | None] = mapped_column(Text)
    helo: Mapped[str | None] = mapped_column(Text)
    country: Mapped[str | None] = mapped_column(String(8))
    subject: Mapped[str | None] = mapped_column(Text)
    message_id: Mapped[str | None] = mapped_column(Text)
    verdict: Mapped[str] = mapped_column(String(16))
    score: Mapped[float] = mapped_column(Float)
    findings: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    iocs: Mapped[dict[str, Any]] = mapped_column(JSON)
    attribution: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    # Size and SHA-256 of the raw message as received (before compression); kept after delete.
    raw_size: Mapped[int] = mapped_column(BigInteger)
    raw_sha256: Mapped[str] = mapped_column(String(64))

    blob: Mapped[QuarantineBlob | None] = relationship(
        back_populates="message", cascade="all, delete-orphan", passive_deletes=True
    )

    __table_args__ = (
        # The list page: newest first within a status, keyset on (received_at, id).
        Index("ix_quarantine_status_received", "status", "received_at", "id"),
        Index("ix_quarantine_received", "received_at", "id"),
        Index("ix_quarantine_verdict_received", "verdict", "received_at"),
        Index("ix_quarantine_message_id", "message_id"),
    )


class QuarantineBlob(Base):
    """The raw message, zlib-compressed. Absent once the message has been deleted."""

    __tablename__ = "quarantine_blob"

    quarantine_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("quarantine.id", ondelete="CASCADE"), primary_key=True
    )
    compression: Mapped[str] = mapped_column(String(8))  # "zlib"
    data: Mapped[bytes] = mapped_column(LargeBinary)

    message: Mapped[Quarantine] = relationship(back_populates="blob")


class QuarantineRecipient(Base):
    __tablename__ = "quarantine_recipient"

    quarantine_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("quarantine.id", ondelete="CASCADE"), primary_key=True
    )
    address: Mapped[str] = mapped_column(Text, primary_key=True)  # lower-cased

    __table_args__ = (Index("ix_quarantine_recipient_address", "address", "quarantine_id"),)


class QuarantineFinding(Base):
    __tablename__ = "quarantine_finding"

    quarantine_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("quarantine.id", ondelete="CASCADE"), primary_key=True
    )
    finding_id: Mapped[str] = mapped_column(String(64), primary_key=True)

    __table_args__ = (Index("ix_quarantine_finding_finding", "finding_id", "quarantine_id"),)


class Event(Base):
    """One decision of a front door about one SMTP transaction (or scanned message)."""

    __tablename__ = "event"

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime())
    front_door: Mapped[str] = mapped_column(String(16))
    client_ip: Mapped[str | None] = mapped_column(Text)
    helo: Mapped[str | None] = mapped_column(Text)
    country: Mapped[str | None] = mapped_column(String(8))
    mail_from: Mapped[str | None] = mapped_column(Text)
    rcpt_to: Mapped[list[str]] = mapped_column(JSON)
    header_from: Mapped[str | None] = mapped_column(Text)
    attribution: Mapped[str] = mapped_column(Text)
    p1: Mapped[str] = mapped_column(String(16))
    p2: Mapped[str] = mapped_column(String(16))
    mode: Mapped[str] = mapped_column(String(8))
    decision: Mapped[str] = mapped_column(String(16))
    verdict: Mapped[str | None] = mapped_column(String(16))
    score: Mapped[float | None] = mapped_column(Float)
    finding_ids: Mapped[list[str]] = mapped_column(JSON)
    message_id: Mapped[str | None] = mapped_column(Text)
    subject: Mapped[str | None] = mapped_column(Text)
    queue_id: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index("ix_event_at", "at", "id"),
        Index("ix_event_decision_at", "decision", "at"),
        Index("ix_event_front_door_at", "front_door", "at"),
    )


class Audit(Base):
    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime())
    actor: Mapped[str] = mapped_column(Text)
    action: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(Text)
    detail: Mapped[str] = mapped_column(Text)

    __table_args__ = (Index("ix_audit_target", "target", "id"),)


class Account(Base):
    __tablename__ = "account"

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(8))  # smtp | admin
    username: Mapped[str] = mapped_column(Text)
    password_hash: Mapped[str] = mapped_column(Text)
    send_as: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())

    __table_args__ = (UniqueConstraint("kind", "username", name="uq_account_kind_username"),)
