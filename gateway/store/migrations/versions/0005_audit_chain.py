"""Audit trail: hash chain columns (seq, prev_hash, record_hash); existing rows chained in id order.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01

The canonical form below is a frozen copy of ``gateway.audit.chain.canonical`` (version 1): a
migration must keep producing the same hashes whatever the application code becomes later.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_GENESIS = "0" * 64

_events = sa.table(
    "audit_events",
    sa.column("id", sa.Integer()),
    sa.column("at", sa.DateTime(timezone=True)),
    sa.column("kind", sa.Text()),
    sa.column("actor", sa.Text()),
    sa.column("subject", sa.Text()),
    sa.column("ip", sa.Text()),
    sa.column("outcome", sa.Text()),
    sa.column("details", sa.Text()),
    sa.column("seq", sa.Integer()),
    sa.column("prev_hash", sa.Text()),
    sa.column("record_hash", sa.Text()),
)


def _hash(row: sa.Row[tuple[object, ...]], seq: int, prev: str) -> str:
    at = row.at
    if isinstance(at, str):  # pragma: no cover - defensive: a driver handing back text
        at = datetime.fromisoformat(at)
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)  # SQLite hands back the UTC it was written in, naive
    doc = {
        "v": 1,
        "id": row.id,
        "seq": seq,
        "at": at.astimezone(UTC).isoformat(timespec="microseconds"),
        "kind": row.kind,
        "actor": row.actor,
        "subject": row.subject,
        "ip": row.ip,
        "outcome": row.outcome,
        "details": row.details,
        "prev": prev,
    }
    data = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(data).hexdigest()


def upgrade() -> None:
    """Add the chain columns, chain every existing record in id order, then make them required."""
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("seq", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("prev_hash", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("record_hash", sa.Text(), nullable=True))

    bind = op.get_bind()
    prev = _GENESIS
    rows = bind.execute(sa.select(_events).order_by(_events.c.id)).all()
    updates = []
    for seq, row in enumerate(rows, start=1):
        digest = _hash(row, seq, prev)
        updates.append({"rid": row.id, "seq": seq, "prev_hash": prev, "record_hash": digest})
        prev = digest
    if updates:
        bind.execute(
            _events.update()
            .where(_events.c.id == sa.bindparam("rid"))
            .values(
                seq=sa.bindparam("seq"),
                prev_hash=sa.bindparam("prev_hash"),
                record_hash=sa.bindparam("record_hash"),
            ),
            updates,
        )

    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.alter_column("seq", existing_type=sa.Integer(), nullable=False)
        batch_op.alter_column("prev_hash", existing_type=sa.Text(), nullable=False)
        batch_op.alter_column("record_hash", existing_type=sa.Text(), nullable=False)
        batch_op.create_unique_constraint(batch_op.f("uq_audit_events_seq"), ["seq"])


def downgrade() -> None:
    """Drop the chain columns (the records stay, unchained)."""
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_audit_events_seq"), type_="unique")
        batch_op.drop_column("record_hash")
        batch_op.drop_column("prev_hash")
        batch_op.drop_column("seq")
