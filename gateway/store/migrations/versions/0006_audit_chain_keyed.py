"""Audit trail: keyed chain (chain_version, key_id); every existing record is marked legacy (version 1).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-15

Records already in the table keep their SHA-256 hashes and verify as before; they are marked
``chain_version`` 1 here, which makes the changeover point visible in the table. Records written
after this revision by gateways holding the keyring are version 2 (HMAC under a key derived from the
keyring, ``gateway.audit.chain_key``).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_events = sa.table(
    "audit_events",
    sa.column("chain_version", sa.Integer()),
    sa.column("key_id", sa.Text()),
)


def upgrade() -> None:
    """Add the columns, mark every existing record as version 1, then make them required."""
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("chain_version", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("key_id", sa.Text(), nullable=True))
    op.get_bind().execute(_events.update().values(chain_version=1, key_id=""))
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.alter_column("chain_version", existing_type=sa.Integer(), nullable=False)
        batch_op.alter_column("key_id", existing_type=sa.Text(), nullable=False)


def downgrade() -> None:
    """Drop the columns, but only while no record is keyed.

    Without ``chain_version`` and ``key_id`` a keyed record can never be verified again (not even
    after upgrading once more): the proof would be destroyed, so this refuses instead.
    """
    bind = op.get_bind()
    keyed = bind.execute(
        sa.select(sa.func.count()).select_from(_events).where(_events.c.chain_version != 1)
    ).scalar_one()
    if keyed:
        raise RuntimeError(
            f"{keyed} audit record(s) are keyed (chain version 2); downgrading below 0006 would make "
            "them unverifiable. Export an evidence bundle and keep this schema instead."
        )
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_column("key_id")
        batch_op.drop_column("chain_version")
