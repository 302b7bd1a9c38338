"""Every admin who issued an account's credentials, not only the last (``credential_issuers``): an
email address one admin set still finds the account at the identity provider after another admin set its
password (a gap in 0016's single ``users.credentials_issued_by``, which this replaces).

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | Sequence[str] | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create ``credential_issuers`` from ``users.credentials_issued_by``, then drop that column."""
    op.create_table(
        "credential_issuers",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("issuer_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["issuer_id"],
            ["users.id"],
            name=op.f("fk_credential_issuers_issuer_id_users"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_credential_issuers_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("user_id", "issuer_id", name=op.f("pk_credential_issuers")),
    )
    op.execute(
        "INSERT INTO credential_issuers (user_id, issuer_id) "
        "SELECT id, credentials_issued_by FROM users WHERE credentials_issued_by IS NOT NULL"
    )
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_users_credentials_issued_by_users"), type_="foreignkey")
        batch_op.drop_column("credentials_issued_by")


def downgrade() -> None:
    """Put back ``users.credentials_issued_by`` with one issuer per account (the lowest id), and drop
    ``credential_issuers``."""
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("credentials_issued_by", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_users_credentials_issued_by_users"),
            "users",
            ["credentials_issued_by"],
            ["id"],
            ondelete="SET NULL",
        )
    op.execute(
        "UPDATE users SET credentials_issued_by = "
        "(SELECT min(issuer_id) FROM credential_issuers WHERE credential_issuers.user_id = users.id)"
    )
    op.drop_table("credential_issuers")
