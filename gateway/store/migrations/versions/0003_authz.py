"""Authorization: the policy store (rules and versions) and the assertion-signing keys.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the policy and signing-key tables."""
    op.create_table(
        "policy_rules",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ptype", sa.Text(), nullable=False),
        sa.Column("v0", sa.Text(), nullable=False),
        sa.Column("v1", sa.Text(), nullable=False),
        sa.Column("v2", sa.Text(), nullable=False),
        sa.Column("v3", sa.Text(), nullable=False),
        sa.Column("v4", sa.Text(), nullable=False),
        sa.Column("v5", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_policy_rules")),
    )
    with op.batch_alter_table("policy_rules", schema=None) as batch_op:
        batch_op.create_index("ix_policy_rules_ptype_v0", ["ptype", "v0"], unique=False)

    op.create_table(
        "policy_versions",
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("diff", sa.Text(), nullable=False),
        sa.Column("policy", sa.Text(), nullable=False),
        sa.Column("lines", sa.Integer(), nullable=False),
        sa.Column("restored_from", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_policy_versions")),
    )
    op.create_table(
        "signing_keys",
        sa.Column("kid", sa.Text(), nullable=False),
        sa.Column("algorithm", sa.Text(), nullable=False),
        sa.Column("public_jwk", sa.Text(), nullable=False),
        sa.Column("private_enc", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("active_from", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("kid", name=op.f("pk_signing_keys")),
    )


def downgrade() -> None:
    """Drop the policy and signing-key tables."""
    op.drop_table("signing_keys")
    op.drop_table("policy_versions")
    with op.batch_alter_table("policy_rules", schema=None) as batch_op:
        batch_op.drop_index("ix_policy_rules_ptype_v0")
    op.drop_table("policy_rules")
