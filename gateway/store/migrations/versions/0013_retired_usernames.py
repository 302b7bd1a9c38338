"""Retired usernames: keyed digests of deleted accounts' names, never given again just in time.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create ``retired_usernames``."""
    op.create_table(
        "retired_usernames",
        sa.Column("name_key", sa.Text(), nullable=False),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name_key", name=op.f("pk_retired_usernames")),
    )


def downgrade() -> None:
    """Drop ``retired_usernames``."""
    op.drop_table("retired_usernames")
