"""Owed revocations: accounts whose sessions must still be ended once the state store answers.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | Sequence[str] | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create ``owed_revocations``."""
    op.create_table(
        "owed_revocations",
        sa.Column("user_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_owed_revocations")),
    )


def downgrade() -> None:
    """Drop ``owed_revocations``."""
    op.drop_table("owed_revocations")
