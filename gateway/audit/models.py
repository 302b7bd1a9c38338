"""The audit trail's table: one row per security event, linked into the keyed hash chain.

Only ``gateway.audit.chain`` writes rows (it assigns ``seq`` and the hashes under the chain lock);
everything else reads them. The table is the audit floor's own, so the identity tables and the trail
do not import each other.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, Integer, Text
from sqlalchemy.orm import Mapped, mapped_column

from gateway.store.models import Base

__all__ = ["AuditEvent"]


class AuditEvent(Base):
    """An append-only security event (sign-in, MFA, enrollment, lock, admin action).

    Records form one hash chain (``gateway.audit.chain``): ``seq`` numbers them 1, 2, 3, … without
    gaps, ``prev_hash`` is the ``record_hash`` of record ``seq - 1`` and ``record_hash`` is SHA-256 over
    this record's canonical content and ``prev_hash`` (``chain_version`` 1, records from before the
    chain was keyed) or HMAC-SHA256 under the chain key of keyring key ``key_id`` (version 2; version 3
    covers per-field commitments instead of the personal fields, which makes them erasable). A
    changed, deleted, inserted or reordered row breaks the chain at that row.
    """

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_at", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime]
    kind: Mapped[str]
    # Who did it ("user:alice", "admin:bob", "system") and about whom (a username or "").
    actor: Mapped[str]
    subject: Mapped[str] = mapped_column(default="", index=True)
    ip: Mapped[str] = mapped_column(default="")
    outcome: Mapped[str] = mapped_column(Text, default="success")
    # JSON object with event details; never secrets (codes, passwords, tokens).
    details: Mapped[str] = mapped_column(default="{}")
    # Position in the chain, assigned under the chain lock: contiguous, so a deleted row leaves a gap.
    seq: Mapped[int] = mapped_column(unique=True)
    prev_hash: Mapped[str]
    record_hash: Mapped[str]
    # 1: SHA-256, no secret (written before migration 0006); 2: keyed. No default: every writer must
    # say which, and only gateway.audit.chain writes rows.
    chain_version: Mapped[int]
    # The keyring key id whose derived chain key made record_hash ("" for version 1).
    key_id: Mapped[str]
    # Version 3 (gateway.audit.erasable): JSON {field: hex salt} for each personal field not erased,
    # and {field: {"c": commitment, "by": seq of the privacy.audit_erased record}} for each erased
    # one; "{}" for versions 1 and 2. The server default fills rows written by releases before 0008.
    salts: Mapped[str] = mapped_column(server_default="{}")
    erased: Mapped[str] = mapped_column(server_default="{}")
