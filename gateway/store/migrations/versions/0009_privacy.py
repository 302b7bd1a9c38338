"""Privacy: the rights-request register, consent records, legal holds, removed content kept for
investigation, retention runs, and on ``users`` the closure time, restriction and objections.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create the privacy tables and add the users' privacy columns."""
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("closed_at", _TS, nullable=True))
        batch_op.add_column(sa.Column("restricted", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column("objections", sa.Text(), nullable=False, server_default=""))

    op.create_table(
        "privacy_requests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ref", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("law", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("channel", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("received_at", _TS, nullable=False),
        sa.Column("verified_at", _TS, nullable=True),
        sa.Column("verified_by", sa.Text(), nullable=False),
        sa.Column("due_at", _TS, nullable=False),
        sa.Column("completed_at", _TS, nullable=True),
        sa.Column("details", sa.Text(), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("hold_ref", sa.Text(), nullable=False),
        sa.Column("overdue_alerted_at", _TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_privacy_requests")),
        sa.UniqueConstraint("ref", name=op.f("uq_privacy_requests_ref")),
    )
    with op.batch_alter_table("privacy_requests", schema=None) as batch_op:
        batch_op.create_index("ix_privacy_requests_open", ["status", "due_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_privacy_requests_user_id"), ["user_id"], unique=False)

    op.create_table(
        "consent_records",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("purpose", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("decision", sa.Text(), nullable=False),
        sa.Column("at", _TS, nullable=False),
        sa.Column("method", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_consent_records_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consent_records")),
    )
    with op.batch_alter_table("consent_records", schema=None) as batch_op:
        batch_op.create_index("ix_consent_records_user_purpose", ["user_id", "purpose"], unique=False)

    op.create_table(
        "legal_holds",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("reference", sa.Text(), nullable=False),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("subject_key", sa.Text(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("data_class", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("placed_by", sa.Text(), nullable=False),
        sa.Column("placed_at", _TS, nullable=False),
        sa.Column("released_by", sa.Text(), nullable=False),
        sa.Column("released_at", _TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_legal_holds")),
        sa.UniqueConstraint("reference", name=op.f("uq_legal_holds_reference")),
    )
    with op.batch_alter_table("legal_holds", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_legal_holds_subject_key"), ["subject_key"], unique=False)

    op.create_table(
        "removed_content",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ref", sa.Text(), nullable=False),
        sa.Column("pseudonym", sa.Text(), nullable=False),
        sa.Column("subject_key", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("removed_at", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_removed_content")),
        sa.UniqueConstraint("ref", name=op.f("uq_removed_content_ref")),
    )
    with op.batch_alter_table("removed_content", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_removed_content_expires_at"), ["expires_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_removed_content_subject_key"), ["subject_key"], unique=False)

    op.create_table(
        "retention_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("period", sa.Text(), nullable=False),
        sa.Column("started_at", _TS, nullable=False),
        sa.Column("finished_at", _TS, nullable=True),
        sa.Column("runner", sa.Text(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_retention_runs")),
        sa.UniqueConstraint("period", name=op.f("uq_retention_runs_period")),
    )


def downgrade() -> None:
    """Drop the privacy tables and the users' privacy columns."""
    op.drop_table("retention_runs")
    with op.batch_alter_table("removed_content", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_removed_content_subject_key"))
        batch_op.drop_index(batch_op.f("ix_removed_content_expires_at"))
    op.drop_table("removed_content")
    with op.batch_alter_table("legal_holds", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_legal_holds_subject_key"))
    op.drop_table("legal_holds")
    with op.batch_alter_table("consent_records", schema=None) as batch_op:
        batch_op.drop_index("ix_consent_records_user_purpose")
    op.drop_table("consent_records")
    with op.batch_alter_table("privacy_requests", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_privacy_requests_user_id"))
        batch_op.drop_index("ix_privacy_requests_open")
    op.drop_table("privacy_requests")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("objections")
        batch_op.drop_column("restricted")
        batch_op.drop_column("closed_at")
