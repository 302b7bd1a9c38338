"""The admin console: the decision sample (request shapes per hour, replayed by the what-if), policy
proposals (two-person approval) and the replica registry (each process's heartbeat).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the decision_samples, policy_proposals and replicas tables."""
    op.create_table(
        "decision_samples",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("bucket", sa.DateTime(timezone=True), nullable=False),
        sa.Column("principals", sa.Text(), nullable=False),
        sa.Column("route", sa.Text(), nullable=False),
        sa.Column("method", sa.Text(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_decision_samples")),
        sa.UniqueConstraint(
            "bucket", "principals", "route", "method", "path", name="uq_decision_samples_shape"
        ),
    )
    with op.batch_alter_table("decision_samples", schema=None) as batch_op:
        batch_op.create_index("ix_decision_samples_bucket", ["bucket"], unique=False)

    op.create_table(
        "policy_proposals",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("proposer", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("base_version", sa.Integer(), nullable=False),
        sa.Column("policy", sa.Text(), nullable=False),
        sa.Column("diff", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("decided_by", sa.Text(), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decision_reason", sa.Text(), nullable=False),
        sa.Column("applied_version", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_policy_proposals")),
    )
    with op.batch_alter_table("policy_proposals", schema=None) as batch_op:
        batch_op.create_index("ix_policy_proposals_status", ["status"], unique=False)

    op.create_table(
        "replicas",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("version", sa.Text(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ready", sa.Boolean(), nullable=False),
        sa.Column("policy_version", sa.Integer(), nullable=False),
        sa.Column("config_generation", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_replicas")),
    )


def downgrade() -> None:
    """Drop the decision_samples, policy_proposals and replicas tables."""
    op.drop_table("replicas")
    with op.batch_alter_table("policy_proposals", schema=None) as batch_op:
        batch_op.drop_index("ix_policy_proposals_status")
    op.drop_table("policy_proposals")
    with op.batch_alter_table("decision_samples", schema=None) as batch_op:
        batch_op.drop_index("ix_decision_samples_bucket")
    op.drop_table("decision_samples")
