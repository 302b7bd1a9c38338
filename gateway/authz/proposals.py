"""Two-person approval of policy changes (``admin.approvals: 2``).

One admin proposes a whole new policy with a reason; it goes live only when a *different* admin
approves it, before it expires, and only on top of the version it was proposed against: approving
a change computed from an older policy would silently undo whatever was stored since, so such a
proposal turns ``stale`` and must be proposed again. Nobody approves their own proposal; the
proposer may withdraw it, any other admin may reject it. Every step is in the audit trail.

Approval is a compare-and-set on the row (``pending`` → ``applied``), so two admins approving at
once, on two replicas, apply it once; the policy store's own version check does the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import select, update

from gateway.audit.trail import AuditLog
from gateway.authz.models import PolicyProposalRow
from gateway.authz.rules import PolicyRules, parse_policy
from gateway.authz.store import Keep, PolicyConflict, PolicyStore, policy_diff
from gateway.clock import Clock
from gateway.errors import BadRequest, Forbidden, GatewayError
from gateway.store.db import Database, store_errors

__all__ = [
    "ApprovalRequired",
    "Proposal",
    "ProposalClosed",
    "ProposalNotFound",
    "ProposalStatus",
    "Proposals",
    "SelfApproval",
]


class ProposalStatus(StrEnum):
    PENDING = "pending"
    APPLIED = "applied"
    REJECTED = "rejected"
    WITHDRAWN = "withdrawn"
    # The live policy moved on before approval: applying it would undo the change stored since.
    STALE = "stale"
    # Read from expires_at, never stored: a pending proposal past its expiry.
    EXPIRED = "expired"


class ProposalNotFound(GatewayError):
    status = 404
    reason = "proposal-not-found"
    title = "No such proposal"


class ProposalClosed(GatewayError):
    """The proposal is no longer pending (applied, rejected, withdrawn, stale or expired)."""

    status = 409
    reason = "proposal-closed"
    title = "Proposal closed"


class ApprovalRequired(Forbidden):
    """``admin.approvals: 2``: the policy changes only through a proposal another admin approves."""

    reason = "policy-approval-required"
    title = "Another admin must approve"


class SelfApproval(Forbidden):
    """The proposer tried to approve their own change."""

    reason = "proposal-self-approval"
    title = "Another admin must approve"


@dataclass(frozen=True, slots=True)
class Proposal:
    id: int
    created_at: datetime
    expires_at: datetime
    proposer: str
    reason: str
    base_version: int
    policy: str
    diff: str
    status: ProposalStatus
    decided_by: str | None
    decided_at: datetime | None
    decision_reason: str
    applied_version: int | None

    @property
    def rules(self) -> PolicyRules:
        return parse_policy(self.policy, source=f"proposal {self.id}")


class Proposals:
    """Proposals on the relational store; see the module docstring."""

    def __init__(
        self,
        db: Database,
        store: PolicyStore,
        audit: AuditLog,
        clock: Clock,
        *,
        ttl: timedelta = timedelta(days=2),
    ) -> None:
        if ttl <= timedelta(0):
            raise ValueError("ttl must be positive")
        self._db = db
        self._store = store
        self._audit = audit
        self._clock = clock
        self._ttl = ttl

    async def propose(self, rules: PolicyRules, *, actor: str, reason: str) -> Proposal:
        """Record a proposal to make ``rules`` the policy; validated now, as a direct save would be.

        Raises:
            BadRequest: no reason given, or the draft equals the live policy.
            PolicyRejected: validation found errors.
        """
        if not reason.strip():
            raise BadRequest(
                "Say why the policy changes: the reason is kept with the proposal and in the audit trail."
            )
        current = await self._store.current()
        csv = rules.to_csv()
        if csv == current.rules.to_csv():
            raise BadRequest("The draft is the live policy: there is nothing to propose.")
        await self._store.check(rules)
        now = self._clock.now()
        row = PolicyProposalRow(
            created_at=now,
            expires_at=now + self._ttl,
            proposer=actor,
            reason=reason,
            base_version=current.version,
            policy=csv,
            diff=policy_diff(current.csv, csv, before=f"version {current.version}", after="proposed"),
            status=ProposalStatus.PENDING.value,
            decision_reason="",
        )
        with store_errors("policy proposal"):
            async with self._db.session() as session:
                session.add(row)
                await session.commit()
        await self._audit.record(
            "policy.proposed",
            actor=actor,
            details={"proposal": row.id, "base_version": current.version, "reason": reason},
        )
        return self._proposal(row)

    async def approve(
        self, proposal_id: int, *, actor: str, reason: str = "", keep: Keep | None = None
    ) -> int:
        """Apply a pending proposal of another admin; returns the new policy version. ``keep`` is the
        store's last check of the policy about to be stored (:meth:`PolicyStore.replace`); what it
        raises leaves the proposal open.

        Raises:
            ProposalNotFound, ProposalClosed, SelfApproval: as named.
            ProposalClosed: also when the live policy moved on since the proposal (it turns stale).
        """
        proposal = await self.get(proposal_id)
        self._require_open(proposal)
        if proposal.proposer == actor:
            await self._audit.record(
                "policy.approved",
                actor=actor,
                outcome="failure",
                details={"proposal": proposal_id, "why": "own"},
            )
            raise SelfApproval("You proposed this change: another admin must approve it.")
        if not await self._claim(proposal, ProposalStatus.APPLIED, actor, reason):
            raise ProposalClosed(f"Proposal {proposal_id} was decided by someone else meanwhile.")
        try:
            version = await self._store.replace(
                proposal.rules,
                actor=actor,
                reason=f"{proposal.reason} (proposed by {proposal.proposer}, proposal {proposal_id})",
                expected_version=proposal.base_version,
                keep=keep,
            )
        except PolicyConflict:
            await self._set(proposal_id, status=ProposalStatus.STALE)
            await self._audit.record(
                "policy.approved",
                actor=actor,
                outcome="failure",
                details={"proposal": proposal_id, "why": "stale"},
            )
            raise ProposalClosed(
                f"The live policy changed since proposal {proposal_id} was made (it was proposed against"
                f" version {proposal.base_version}); it can no longer be applied. Propose it again."
            ) from None
        except BaseException:
            # Nothing was stored (database down, ...): the proposal stays open for another try.
            await self._set(proposal_id, status=ProposalStatus.PENDING, decided_by=None, decided_at=None)
            raise
        await self._set(proposal_id, applied_version=version)
        await self._audit.record(
            "policy.approved",
            actor=actor,
            subject=proposal.proposer,
            details={"proposal": proposal_id, "version": version, "reason": reason},
        )
        return version

    async def reject(self, proposal_id: int, *, actor: str, reason: str) -> None:
        """Close a pending proposal without applying it (the proposer withdraws, others reject)."""
        proposal = await self.get(proposal_id)
        self._require_open(proposal)
        status = ProposalStatus.WITHDRAWN if actor == proposal.proposer else ProposalStatus.REJECTED
        if not await self._claim(proposal, status, actor, reason):
            raise ProposalClosed(f"Proposal {proposal_id} was decided by someone else meanwhile.")
        await self._audit.record(
            f"policy.{status.value}",
            actor=actor,
            subject=proposal.proposer,
            details={"proposal": proposal_id, "reason": reason},
        )

    async def get(self, proposal_id: int) -> Proposal:
        with store_errors("policy proposal"):
            async with self._db.session() as session:
                row = await session.get(PolicyProposalRow, proposal_id)
        if row is None:
            raise ProposalNotFound(f"There is no policy proposal {proposal_id}.")
        return self._proposal(row)

    async def list(self, *, open_only: bool = False, limit: int = 50) -> list[Proposal]:
        """The newest proposals first; ``open_only`` keeps the pending, unexpired ones."""
        query = select(PolicyProposalRow).order_by(PolicyProposalRow.id.desc()).limit(limit)
        if open_only:
            query = query.where(
                PolicyProposalRow.status == ProposalStatus.PENDING.value,
                PolicyProposalRow.expires_at > self._clock.now(),
            )
        with store_errors("policy proposals"):
            async with self._db.session() as session:
                rows = (await session.scalars(query)).all()
        return [self._proposal(row) for row in rows]

    # -- internals ---------------------------------------------------------------------------------

    def _require_open(self, proposal: Proposal) -> None:
        if proposal.status is not ProposalStatus.PENDING:
            raise ProposalClosed(
                f"Proposal {proposal.id} is {proposal.status.value}; only a pending one can be decided."
            )

    async def _claim(self, proposal: Proposal, status: ProposalStatus, actor: str, reason: str) -> bool:
        # The compare-and-set: exactly one decision wins, on any replica.
        statement = (
            update(PolicyProposalRow)
            .where(
                PolicyProposalRow.id == proposal.id,
                PolicyProposalRow.status == ProposalStatus.PENDING.value,
                PolicyProposalRow.expires_at > self._clock.now(),
            )
            .values(
                status=status.value, decided_by=actor, decided_at=self._clock.now(), decision_reason=reason
            )
        )
        with store_errors("policy proposal"):
            async with self._db.session() as session:
                result = await session.execute(statement)
                await session.commit()
        return int(getattr(result, "rowcount", 0) or 0) == 1

    async def _set(self, proposal_id: int, **values: object) -> None:
        for key, value in list(values.items()):
            if isinstance(value, ProposalStatus):
                values[key] = value.value
        with store_errors("policy proposal"):
            async with self._db.session() as session:
                await session.execute(
                    update(PolicyProposalRow).where(PolicyProposalRow.id == proposal_id).values(**values)
                )
                await session.commit()

    def _proposal(self, row: PolicyProposalRow) -> Proposal:
        status = ProposalStatus(row.status)
        if status is ProposalStatus.PENDING and row.expires_at <= self._clock.now():
            status = ProposalStatus.EXPIRED
        return Proposal(
            id=row.id,
            created_at=row.created_at,
            expires_at=row.expires_at,
            proposer=row.proposer,
            reason=row.reason,
            base_version=row.base_version,
            policy=row.policy,
            diff=row.diff,
            status=status,
            decided_by=row.decided_by,
            decided_at=row.decided_at,
            decision_reason=row.decision_reason,
            applied_version=row.applied_version,
        )
