"""Two-person approval on SQLite and PostgreSQL: the attacks first (own approval, stale base, expiry,
two approvers racing), then the audit trail."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import select

from gateway.audit.models import AuditEvent
from gateway.audit.trail import AuditLog
from gateway.authz.proposals import (
    ProposalClosed,
    ProposalNotFound,
    Proposals,
    ProposalStatus,
    SelfApproval,
)
from gateway.authz.rules import parse_policy
from gateway.authz.store import PolicyRejected, PolicyStore
from gateway.clock import FakeClock
from gateway.errors import BadRequest
from gateway.store.db import Database
from gateway.store.fast import MemoryFastState

BASE = "p, admin, *, /*, *, allow\np, authenticated, app, /public/*, GET, allow\n"
DRAFT = BASE + "p, user:bob, app, /reports/*, GET, allow\n"
OTHER = BASE + "p, user:carol, app, /wiki/*, GET, allow\n"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def store(database: Database, clock: FakeClock) -> PolicyStore:
    store = PolicyStore(database, MemoryFastState(), AuditLog(database, clock=clock), clock)
    await store.replace(parse_policy(BASE), actor="system:test", reason="base")
    return store


@pytest.fixture
def proposals(database: Database, store: PolicyStore, clock: FakeClock) -> Proposals:
    return Proposals(database, store, AuditLog(database, clock=clock), clock, ttl=timedelta(hours=1))


async def events(db: Database, prefix: str) -> list[tuple[str, str, str]]:
    async with db.session() as session:
        rows = (await session.scalars(select(AuditEvent).order_by(AuditEvent.id))).all()
    return [(e.kind, e.actor, e.outcome) for e in rows if e.kind.startswith(prefix)]


async def test_another_admin_approves_and_it_goes_live(
    proposals: Proposals, store: PolicyStore, database: Database
) -> None:
    proposal = await proposals.propose(parse_policy(DRAFT), actor="user:alice", reason="bob reads reports")
    assert proposal.status is ProposalStatus.PENDING
    assert proposal.base_version == 1
    assert "+p, user:bob, app, /reports/*, GET, allow" in proposal.diff
    assert (await store.current()).version == 1  # nothing live yet
    version = await proposals.approve(proposal.id, actor="user:dave", reason="checked")
    assert version == 2
    live = await store.current()
    assert live.csv == parse_policy(DRAFT).to_csv()
    done = await proposals.get(proposal.id)
    assert (done.status, done.decided_by, done.applied_version) == (ProposalStatus.APPLIED, "user:dave", 2)
    history = await store.history()
    assert history[0].actor == "user:dave"
    assert "proposed by user:alice" in history[0].reason
    assert await events(database, "policy.") == [
        ("policy.changed", "system:test", "success"),
        ("policy.proposed", "user:alice", "success"),
        ("policy.changed", "user:dave", "success"),
        ("policy.approved", "user:dave", "success"),
    ]


async def test_nobody_approves_their_own(
    proposals: Proposals, store: PolicyStore, database: Database
) -> None:
    proposal = await proposals.propose(parse_policy(DRAFT), actor="user:alice", reason="r")
    with pytest.raises(SelfApproval):
        await proposals.approve(proposal.id, actor="user:alice")
    assert (await store.current()).version == 1
    assert (await proposals.get(proposal.id)).status is ProposalStatus.PENDING
    assert ("policy.approved", "user:alice", "failure") in await events(database, "policy.")


async def test_a_proposal_on_an_old_version_turns_stale(proposals: Proposals, store: PolicyStore) -> None:
    proposal = await proposals.propose(parse_policy(DRAFT), actor="user:alice", reason="r")
    await store.replace(parse_policy(OTHER), actor="user:erin", reason="meanwhile")
    with pytest.raises(ProposalClosed, match="changed since"):
        await proposals.approve(proposal.id, actor="user:dave")
    # Carol's rule, stored meanwhile, was not undone.
    assert (await store.current()).csv == parse_policy(OTHER).to_csv()
    assert (await proposals.get(proposal.id)).status is ProposalStatus.STALE
    with pytest.raises(ProposalClosed):
        await proposals.approve(proposal.id, actor="user:frank")


async def test_an_expired_proposal_cannot_be_approved(
    proposals: Proposals, store: PolicyStore, clock: FakeClock
) -> None:
    proposal = await proposals.propose(parse_policy(DRAFT), actor="user:alice", reason="r")
    clock.advance(3601)
    assert (await proposals.get(proposal.id)).status is ProposalStatus.EXPIRED
    with pytest.raises(ProposalClosed, match="expired"):
        await proposals.approve(proposal.id, actor="user:dave")
    assert await proposals.list(open_only=True) == []
    assert (await store.current()).version == 1


async def test_two_approvers_at_once_apply_it_once(
    proposals: Proposals, store: PolicyStore, database: Database, clock: FakeClock
) -> None:
    other_replica = Proposals(database, store, AuditLog(database, clock=clock), clock)
    proposal = await proposals.propose(parse_policy(DRAFT), actor="user:alice", reason="r")
    results = await asyncio.gather(
        proposals.approve(proposal.id, actor="user:dave"),
        other_replica.approve(proposal.id, actor="user:erin"),
        return_exceptions=True,
    )
    assert sorted(type(r).__name__ for r in results) == ["ProposalClosed", "int"]
    assert (await store.current()).version == 2


async def test_withdraw_and_reject_close_it(proposals: Proposals, store: PolicyStore) -> None:
    mine = await proposals.propose(parse_policy(DRAFT), actor="user:alice", reason="r")
    await proposals.reject(mine.id, actor="user:alice", reason="wrong draft")
    theirs = await proposals.propose(parse_policy(OTHER), actor="user:alice", reason="r")
    await proposals.reject(theirs.id, actor="user:dave", reason="no")
    statuses = {p.id: p.status for p in await proposals.list()}
    assert statuses == {mine.id: ProposalStatus.WITHDRAWN, theirs.id: ProposalStatus.REJECTED}
    with pytest.raises(ProposalClosed):
        await proposals.approve(theirs.id, actor="user:erin")
    assert (await store.current()).version == 1


async def test_bad_proposals_are_refused_and_store_nothing(proposals: Proposals) -> None:
    with pytest.raises(BadRequest, match="reason"):
        await proposals.propose(parse_policy(DRAFT), actor="user:alice", reason="  ")
    with pytest.raises(BadRequest, match="nothing to propose"):
        await proposals.propose(parse_policy(BASE), actor="user:alice", reason="r")
    with pytest.raises(PolicyRejected):
        await proposals.propose(
            parse_policy("p, user:root, *, /files*, GET, allow\n"), actor="user:alice", reason="r"
        )
    assert await proposals.list() == []
    with pytest.raises(ProposalNotFound):
        await proposals.approve(99, actor="user:dave")
