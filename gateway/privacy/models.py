"""Tables of the privacy domain: the rights-request register, consent records, legal holds, removed
content kept for investigation, and the purge runs of the retention engine.

The register, holds and runs must outlive the people they are about (they are the proof that a right
was honoured), so they hold no foreign key to ``users``: an erased person's rows there carry their
erasure pseudonym instead of the username. Consent records are the person's own and go with them.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, LargeBinary, Text
from sqlalchemy.orm import Mapped, mapped_column

from gateway.store.models import Base

__all__ = ["ConsentRecord", "LegalHold", "PrivacyRequest", "RemovedContent", "RetentionRun"]


class PrivacyRequest(Base):
    """One data-subject request (access, rectification, erasure, ...) and its dates."""

    __tablename__ = "privacy_requests"
    __table_args__ = (Index("ix_privacy_requests_open", "status", "due_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Shown to the person and quoted in audit records: "PR-" and 10 random base32 characters.
    ref: Mapped[str] = mapped_column(unique=True)
    # access | portability | rectification | erasure | restriction | objection | consent_withdrawal
    kind: Mapped[str]
    # gdpr | ccpa | dpdp: decides the due date.
    law: Mapped[str]
    # No foreign key: the register outlives the account (user_id is kept, subject pseudonymised).
    user_id: Mapped[int | None] = mapped_column(Integer, index=True)
    subject: Mapped[str]
    # portal | admin | cli | system (a rule of the gateway, e.g. the retention run)
    channel: Mapped[str]
    # received | verified | completed | rejected | on_hold
    status: Mapped[str]
    received_at: Mapped[datetime]
    verified_at: Mapped[datetime | None]
    # How the person's identity was verified ("signed-in session with a second factor", "admin:bob").
    verified_by: Mapped[str] = mapped_column(default="")
    due_at: Mapped[datetime]
    completed_at: Mapped[datetime | None]
    # JSON: what was asked (fields to correct, purposes objected to, ...); never secrets.
    details: Mapped[str] = mapped_column(Text, default="{}")
    # What was done, or why it was refused or held, in words the person can read.
    outcome: Mapped[str] = mapped_column(Text, default="")
    # The legal hold holding an erasure back.
    hold_ref: Mapped[str] = mapped_column(default="")
    overdue_alerted_at: Mapped[datetime | None]


class ConsentRecord(Base):
    """One answer to one version of one purpose's notice; the newest per purpose is the current one."""

    __tablename__ = "consent_records"
    __table_args__ = (Index("ix_consent_records_user_purpose", "user_id", "purpose"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    purpose: Mapped[str]
    version: Mapped[int] = mapped_column(Integer)
    # granted | refused | withdrawn
    decision: Mapped[str]
    at: Mapped[datetime]
    # How it was given: "sign-in prompt", "account page", "admin:<name>".
    method: Mapped[str]


class LegalHold(Base):
    """A court or government order (or counsel's instruction) that suspends deletion.

    ``scope`` "person": ``subject_key`` is the keyed digest of the username (it still finds the
    person's removed content after erasure); ``scope`` "class": ``data_class`` names what is held.
    """

    __tablename__ = "legal_holds"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    reference: Mapped[str] = mapped_column(unique=True)
    scope: Mapped[str]
    subject_key: Mapped[str] = mapped_column(default="", index=True)
    # The username when placed (pseudonymised if the person is erased later); "" for a class hold.
    subject: Mapped[str] = mapped_column(default="")
    data_class: Mapped[str] = mapped_column(default="")
    reason: Mapped[str] = mapped_column(Text)
    placed_by: Mapped[str]
    placed_at: Mapped[datetime]
    released_by: Mapped[str] = mapped_column(default="")
    released_at: Mapped[datetime | None]


class RemovedContent(Base):
    """What an erasure removed, kept encrypted and restricted for investigation until ``expires_at``.

    ``payload`` is keyring ciphertext (AES-256-GCM) of the person's export taken just before erasure,
    or of the values a correction replaced while a legal hold covered the person (``pseudonym`` empty);
    only ``gateway privacy removed open`` shows it (audited), and the retention run deletes the row
    when it expires and no hold covers it.
    """

    __tablename__ = "removed_content"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # The privacy request (or the retention run) that removed it.
    ref: Mapped[str] = mapped_column(unique=True)
    pseudonym: Mapped[str]
    # Keyed digest of the username, for a legal hold placed after the erasure.
    subject_key: Mapped[str] = mapped_column(index=True)
    reason: Mapped[str]
    removed_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)
    payload: Mapped[bytes] = mapped_column(LargeBinary)


class RetentionRun(Base):
    """One purge of the retention engine. ``period`` is unique: one run per period across replicas."""

    __tablename__ = "retention_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    period: Mapped[str] = mapped_column(unique=True)
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    # Which process ran it ("<host>:<pid>" or "cli").
    runner: Mapped[str]
    # JSON: rows deleted or erased per data class, and what holds kept.
    summary: Mapped[str] = mapped_column(Text, default="{}")
