"""Initial schema: quarantine (+ blob, recipient and finding index tables), event, audit, account.

Revision ID: 0001
Revises:
Create Date: 2024-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out by hand (not imported from models.py) so this revision stays what it was when
# later revisions change the models.
_AUTO_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "quarantine",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("received_at", _utc(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_changed_at", _utc(), nullable=True),
        sa.Column("status_changed_by", sa.Text(), nullable=True),
        sa.Column("mail_from", sa.Text(), nullable=False),
        sa.Column("header_from", sa.Text(), nullable=True),
        sa.Column("rcpt_to", sa.JSON(), nullable=False),
        sa.Column("client_ip", sa.Text(), nullable=True),
        sa.Column("helo", sa.Text(), nullable=True),
        sa.Column("country", sa.String(8), nullable=True),
        sa.Column("subject", sa.Text(), nullable=True),
        sa.Column("message_id", sa.Text(), nullable=True),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("findings", sa.JSON(), nullable=False),
        sa.Column("iocs", sa.JSON(), nullable=False),
        sa.Column("attribution", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("raw_size", sa.BigInteger(), nullable=False),
        sa.Column("raw_sha256", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_quarantine"),
    )
    op.create_index("ix_quarantine_status_received", "quarantine", ["status", "received_at", "id"])
    op.create_index("ix_quarantine_received", "quarantine", ["received_at", "id"])
    op.create_index("ix_quarantine_verdict_received", "quarantine", ["verdict", "received_at"])
    op.create_index("ix_quarantine_message_id", "quarantine", ["message_id"])

    op.create_table(
        "quarantine_blob",
        sa.Column("quarantine_id", sa.String(32), nullable=False),
        sa.Column("compression", sa.String(8), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["quarantine_id"],
            ["quarantine.id"],
            name="fk_quarantine_blob_quarantine_id_quarantine",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("quarantine_id", name="pk_quarantine_blob"),
    )

    op.create_table(
        "quarantine_recipient",
        sa.Column("quarantine_id", sa.String(32), nullable=False),
        sa.Column("address", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["quarantine_id"],
            ["quarantine.id"],
            name="fk_quarantine_recipient_quarantine_id_quarantine",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("quarantine_id", "address", name="pk_quarantine_recipient"),
    )
    op.create_index(
        "ix_quarantine_recipient_address", "quarantine_recipient", ["address", "quarantine_id"]
    )

    op.create_table(
        "quarantine_finding",
        sa.Column("quarantine_id", sa.String(32), nullable=False),
        sa.Column("finding_id", sa.String(64), nullable=False),
        sa.ForeignKeyConstraint(
            ["quarantine_id"],
            ["quarantine.id"],
            name="fk_quarantine_finding_quarantine_id_quarantine",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("quarantine_id", "finding_id", name="pk_quarantine_finding"),
    )
    op.create_index(
        "ix_quarantine_finding_finding", "quarantine_finding", ["finding_id", "quarantine_id"]
    )

    op.create_table(
        "event",
        sa.Column("id", _AUTO_ID, autoincrement=True, nullable=False),
        sa.Column("at", _utc(), nullable=False),
        sa.Column("front_door", sa.String(16), nullable=False),
        sa.Column("client_ip", sa.Text(), nullable=True),
        sa.Column("helo", sa.Text(), nullable=True),
        sa.Column("country", sa.String(8), nullable=True),
        sa.Column("mail_from", sa.Text(), nullable=True),
        sa.Column("rcpt_to", sa.JSON(), nullable=False),
        sa.Column("header_from", sa.Text(), nullable=True),
        sa.Column("attribution", sa.Text(), nullable=False),
        sa.Column("p1", sa.String(16), nullable=False),
        sa.Column("p2", sa.String(16), nullable=False),
        sa.Column("mode", sa.String(8), nullable=False),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("verdict", sa.String(16), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("finding_ids", sa.JSON(), nullable=False),
        sa.Column("message_id", sa.Text(), nullable=True),
        sa.Column("subject", sa.Text(), nullable=True),
        sa.Column("queue_id", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_event"),
    )
    op.create_index("ix_event_at", "event", ["at", "id"])
    op.create_index("ix_event_decision_at", "event", ["decision", "at"])
    op.create_index("ix_event_front_door_at", "event", ["front_door", "at"])

    op.create_table(
        "audit",
        sa.Column("id", _AUTO_ID, autoincrement=True, nullable=False),
        sa.Column("at", _utc(), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit"),
    )
    op.create_index("ix_audit_target", "audit", ["target", "id"])

    op.create_table(
        "account",
        sa.Column("id", _AUTO_ID, autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("username", sa.Text(), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=False),
        sa.Column("send_as", sa.JSON(), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("updated_at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_account"),
        sa.UniqueConstraint("kind", "username", name="uq_account_kind_username"),
    )


def downgrade() -> None:
    op.drop_table("account")
    op.drop_index("ix_audit_target", table_name="audit")
    op.drop_table("audit")
    op.drop_index("ix_event_front_door_at", table_name="event")
    op.drop_index("ix_event_decision_at", table_name="event")
    op.drop_index("ix_event_at", table_name="event")
    op.drop_table("event")
    op.drop_index("ix_quarantine_finding_finding", table_name="quarantine_finding")
    op.drop_table("quarantine_finding")
    op.drop_index("ix_quarantine_recipient_address", table_name="quarantine_recipient")
    op.drop_table("quarantine_recipient")
    op.drop_table("quarantine_blob")
    op.drop_index("ix_quarantine_message_id", table_name="quarantine")
    op.drop_index("ix_quarantine_verdict_received", table_name="quarantine")
    op.drop_index("ix_quarantine_received", table_name="quarantine")
    op.drop_index("ix_quarantine_status_received", table_name="quarantine")
    op.drop_table("quarantine")
