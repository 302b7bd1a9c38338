"""Tables of incident response: the incident record and its timeline entries.

An incident raised by a detection rule takes the id of the detection (``inc-3f9a1c2b``), so the
fast-state record of what the rule did (``gateway incident show``) and this durable record name the
same thing; later detections of the same rule about the same person or address join it as entries.
The record is kept in the database (not the fast state): it is evidence, outlives a Redis flush, and
is part of the backups.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, Text
from sqlalchemy.orm import Mapped, mapped_column

from gateway.store.models import Base

__all__ = ["IncidentCase", "IncidentEntry"]


class IncidentCase(Base):
    """One incident and where it stands."""

    __tablename__ = "incident_cases"
    __table_args__ = (Index("ix_incident_cases_phase", "phase", "opened_at"),)

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    title: Mapped[str]
    # low | medium | high | critical
    severity: Mapped[str]
    # detection | containment | eradication | recovery | post_incident | closed
    phase: Mapped[str]
    owner: Mapped[str] = mapped_column(Text, default="")
    opened_at: Mapped[datetime]
    # "rule:brute_force", "admin:alice", "operator:root"
    opened_by: Mapped[str]
    updated_at: Mapped[datetime]
    closed_at: Mapped[datetime | None]
    # The detection rule that raised it ("" when an admin opened it).
    rule: Mapped[str] = mapped_column(Text, default="")
    # JSON lists: usernames, route names, addresses (IPs or CIDRs).
    affected_users: Mapped[str] = mapped_column(Text, default="[]")
    routes: Mapped[str] = mapped_column(Text, default="[]")
    addresses: Mapped[str] = mapped_column(Text, default="[]")
    summary: Mapped[str] = mapped_column(Text, default="")
    # Filled in by the team for the post-incident report.
    root_cause: Mapped[str] = mapped_column(Text, default="")
    lessons: Mapped[str] = mapped_column(Text, default="")
    # JSON list of sealed evidence bundles: sha256, file, window, records, sealed_at.
    evidence: Mapped[str] = mapped_column(Text, default="[]")


class IncidentEntry(Base):
    """One line of an incident's own timeline: a phase change, note, action, detection, seal, message."""

    __tablename__ = "incident_entries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[str] = mapped_column(ForeignKey("incident_cases.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime]
    # phase | note | action | detection | evidence | notification | update
    kind: Mapped[str]
    actor: Mapped[str]
    text: Mapped[str] = mapped_column(Text, default="")
    # JSON: what the entry is about (ids, counts, hashes; never a secret).
    details: Mapped[str] = mapped_column(Text, default="{}")
