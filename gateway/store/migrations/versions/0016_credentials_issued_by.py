"""Who issued an account's current credentials: the admin who set its password or email address or sent
its invitation link (``AccountService.lineage``: such an admin and that account count as one approver under
``admin.approvals: 2``).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | Sequence[str] | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add ``users.credentials_issued_by`` (null: the person chose their own)."""
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("credentials_issued_by", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_users_credentials_issued_by_users"),
            "users",
            ["credentials_issued_by"],
            ["id"],
            ondelete="SET NULL",
        )


def downgrade() -> None:
    """Drop ``users.credentials_issued_by``."""
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_users_credentials_issued_by_users"), type_="foreignkey")
        batch_op.drop_column("credentials_issued_by")
