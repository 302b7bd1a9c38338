"""Tables of the policy store: the live rules (casbin's rule table shape), every version of them, and the
decision sample that the what-if replays.

``policy_rules`` holds the current policy, one row per casbin line (``ptype`` and ``v0``…``v5``, the
shape casbin's SQL adapters use, so existing casbin tooling can read it). ``policy_versions`` keeps one
row per change: who made it, when, why, the diff, and the complete policy as CSV, so any version can be
shown or restored without replaying diffs. The current version is the highest ``version``.
``policy_proposals`` holds changes waiting for a second admin (two-person approval,
:mod:`gateway.authz.proposals`). ``decision_samples`` counts the request shapes the data plane decided, per hour
(:mod:`gateway.authz.sample`).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, Integer, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from gateway.store.models import Base

__all__ = ["DecisionSampleRow", "PolicyProposalRow", "PolicyRuleRow", "PolicyVersion"]


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


class DecisionSampleRow(Base):
    """How many requests of one shape (principals, route, method, path) one hour saw."""

    __tablename__ = "decision_samples"
    __table_args__ = (
        UniqueConstraint("bucket", "principals", "route", "method", "path", name="uq_decision_samples_shape"),
        Index("ix_decision_samples_bucket", "bucket"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # The start of the hour (UTC) the requests fell in.
    bucket: Mapped[datetime]
    # The session's principals, sorted and space-separated ("authenticated group:ops user:alice").
    principals: Mapped[str] = mapped_column(Text)
    route: Mapped[str] = mapped_column(Text)
    method: Mapped[str] = mapped_column(Text)
    path: Mapped[str] = mapped_column(Text)
    count: Mapped[int] = mapped_column(Integer)


class PolicyProposalRow(Base):
    """A policy change proposed by one admin, applied only when another approves it."""

    __tablename__ = "policy_proposals"
    __table_args__ = (Index("ix_policy_proposals_status", "status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    proposer: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    # The live version the change was computed from: it applies only on top of that version.
    base_version: Mapped[int] = mapped_column(Integer)
    # The whole proposed policy as casbin CSV, and its diff against the base version.
    policy: Mapped[str] = mapped_column(Text)
    diff: Mapped[str] = mapped_column(Text, default="")
    # pending, applied, rejected, withdrawn, stale (expiry is read from expires_at, not stored).
    status: Mapped[str] = mapped_column(Text)
    decided_by: Mapped[str | None] = mapped_column(Text)
    decided_at: Mapped[datetime | None]
    decision_reason: Mapped[str] = mapped_column(Text, default="")
    applied_version: Mapped[int | None] = mapped_column(Integer)
