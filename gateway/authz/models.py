"""Tables of the policy store: the live rules (casbin's rule table shape) and every version of them.

``policy_rules`` holds the current policy, one row per casbin line (``ptype`` and ``v0``…``v5``, the
shape casbin's SQL adapters use, so existing casbin tooling can read it). ``policy_versions`` keeps one
row per change: who made it, when, why, the diff, and the complete policy as CSV, so any version can be
shown or restored without replaying diffs. The current version is the highest ``version``.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, Integer, Text
from sqlalchemy.orm import Mapped, mapped_column

from gateway.store.models import Base

__all__ = ["PolicyRuleRow", "PolicyVersion"]


class PolicyRuleRow(Base):
    """One line of the live policy (``p`` or ``g``)."""

    __tablename__ = "policy_rules"
    __table_args__ = (Index("ix_policy_rules_ptype_v0", "ptype", "v0"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ptype: Mapped[str] = mapped_column(Text)
    v0: Mapped[str] = mapped_column(Text, default="")
    v1: Mapped[str] = mapped_column(Text, default="")
    v2: Mapped[str] = mapped_column(Text, default="")
    v3: Mapped[str] = mapped_column(Text, default="")
    v4: Mapped[str] = mapped_column(Text, default="")
    v5: Mapped[str] = mapped_column(Text, default="")


class PolicyVersion(Base):
    """One change of the policy, with the full text it produced (append-only)."""

    __tablename__ = "policy_versions"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    created_at: Mapped[datetime]
    # "user:alice", "cli:root", "system:bootstrap".
    actor: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text, default="")
    # Unified diff against the previous version ("" for the first).
    diff: Mapped[str] = mapped_column(Text, default="")
    # The whole policy after this change, as casbin CSV.
    policy: Mapped[str] = mapped_column(Text)
    lines: Mapped[int] = mapped_column(Integer, default=0)
    # The version this one restored, if it was a restore.
    restored_from: Mapped[int | None] = mapped_column(Integer)
