"""Incident response: incident records through the five phases and their timeline entries.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create ``incident_cases`` and ``incident_entries``."""
    op.create_table(
        "incident_cases",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("severity", sa.Text(), nullable=False),
        sa.Column("phase", sa.Text(), nullable=False),
        sa.Column("owner", sa.Text(), nullable=False),
        sa.Column("opened_at", _TS, nullable=False),
        sa.Column("opened_by", sa.Text(), nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.Column("closed_at", _TS, nullable=True),
        sa.Column("rule", sa.Text(), nullable=False),
        sa.Column("affected_users", sa.Text(), nullable=False),
        sa.Column("routes", sa.Text(), nullable=False),
        sa.Column("addresses", sa.Text(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("root_cause", sa.Text(), nullable=False),
        sa.Column("lessons", sa.Text(), nullable=False),
        sa.Column("evidence", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_incident_cases")),
    )
    with op.batch_alter_table("incident_cases", schema=None) as batch_op:
        batch_op.create_index("ix_incident_cases_phase", ["phase", "opened_at"], unique=False)
    op.create_table(
        "incident_entries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("case_id", sa.Text(), nullable=False),
        sa.Column("at", _TS, nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("details", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["case_id"], ["incident_cases.id"], name=op.f("fk_incident_entries_case_id_incident_cases"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_incident_entries")),
    )  # fmt: skip
    with op.batch_alter_table("incident_entries", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_incident_entries_case_id"), ["case_id"], unique=False)


def downgrade() -> None:
    """Drop the incident tables."""
    with op.batch_alter_table("incident_entries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_incident_entries_case_id"))
    op.drop_table("incident_entries")
    with op.batch_alter_table("incident_cases", schema=None) as batch_op:
        batch_op.drop_index("ix_incident_cases_phase")
    op.drop_table("incident_cases")
