"""Erasable audit records (chain version 3): per-record salts of the personal-field commitments and
the commitments of fields that were erased.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add audit_events.salts and audit_events.erased ("{}" for the records already written)."""
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("salts", sa.Text(), nullable=False, server_default="{}"))
        batch_op.add_column(sa.Column("erased", sa.Text(), nullable=False, server_default="{}"))


def downgrade() -> None:
    """Drop the two columns, but only while no record is version 3 (without its salts and erased
    commitments such a record can never be verified again, so this refuses instead)."""
    events = sa.table("audit_events", sa.column("chain_version", sa.Integer()))
    query = sa.select(sa.func.count()).select_from(events).where(events.c.chain_version == 3)
    erasable = op.get_bind().execute(query).scalar_one()
    if erasable:
        raise RuntimeError(
            f"{erasable} audit record(s) are erasable (chain version 3); downgrading below 0008 would make "
            "them unverifiable. Export an evidence bundle and keep this schema instead."
        )
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_column("erased")
        batch_op.drop_column("salts")
