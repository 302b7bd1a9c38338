"""Initial schema: instance (single row) and kv_settings.

Revision ID: 0001
Revises:
Create Date: 2025-01-01

Runs on SQLite (batch mode) and PostgreSQL: use ``op.batch_alter_table`` for ALTERs and name every
constraint (``op.f(...)``) so both backends agree.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create ``instance`` and ``kv_settings``."""
    op.create_table(
        "instance",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("schema_note", sa.Text(), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_instance_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_instance")),
    )
    op.create_table(
        "kv_settings",
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_kv_settings")),
    )


def downgrade() -> None:
    """Drop ``kv_settings`` and ``instance``."""
    op.drop_table("kv_settings")
    op.drop_table("instance")
