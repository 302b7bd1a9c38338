"""The authorize stage honours the "policy_analytics" purpose: a session that opted out is decided as
any other but never counted in the decision sample; everyone else's requests still are. A person's own
access token carries no session (and no choices): it is never counted; a machine client's is."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import pytest

from gateway.authz.decision import Decision, Reason
from gateway.authz.live import LivePolicy
from gateway.authz.sample import DecisionSample
from gateway.clock import FakeClock
from gateway.identity.assertion import AssertionSigner
from gateway.identity.levels import AuthLevel
from gateway.identity.models import User
from gateway.identity.sessions import Session
from gateway.machine.verifier import VerifiedToken
from gateway.observe.record import RequestKind, RequestRecord
from gateway.pipeline.authorize import AccessDenied, authorize, authorize_client
from gateway.pipeline.bearer import InsufficientScope
from gateway.pipeline.context import RequestContext
from gateway.privacy.purposes import GEOLOCATION, POLICY_ANALYTICS
from gateway.store.db import Database


@dataclass
class DenyAll:
    """A policy whose every decision is a default deny (the stage counts before it answers)."""

    calls: int = 0

    def decide(self, principals: frozenset[str], route: str, method: str, path: str) -> Decision:
        self.calls += 1
        return Decision(allowed=False, reason=Reason.NO_MATCHING_RULE, rule=None, principal=None, version=3)

    def decide_without_roles(
        self, principals: frozenset[str], without_roles: frozenset[str], route: str, method: str, path: str
    ) -> Decision:
        """A person's access token is decided without the person's roles (and so by this method)."""
        return self.decide(principals | without_roles, route, method, path)


@dataclass
class Policy:
    authorizer: DenyAll
    behind: bool = False


def _request(clock: FakeClock) -> RequestContext:
    ctx = RequestContext(RequestKind.HTTP, "GET")
    ctx.rec = RequestRecord(at=clock.time(), kind=RequestKind.HTTP, client_ip="192.0.2.1", user_agent="t")
    return ctx


def session(name: str, optout: tuple[str, ...]) -> Session:
    return Session(
        id_hash="0" * 64,
        family="f",
        user_id=1,
        username=name,
        level=AuthLevel.TWO_FACTOR,
        factors=(),
        roles=(),
        created_at=0.0,
        last_seen=0.0,
        ip="192.0.2.1",
        user_agent="pytest",
        host="app.example.com",
        optout=optout,
    )


async def test_an_opted_out_session_is_decided_but_not_sampled(database: Database, clock: FakeClock) -> None:
    # A sample's flush keeps the counts of existing accounts only (an erased person's are dropped).
    async with database.session() as db:
        for name in ("alice", "bob", "carol"):
            db.add(User(username=name, password_hash=None, created_at=clock.now(), updated_at=clock.now()))
        await db.commit()
    sample = DecisionSample(database, clock=clock)
    policy = Policy(DenyAll())
    people = {
        "alice": (POLICY_ANALYTICS,),
        "bob": (),
        # Another purpose's opt-out does not stop this one.
        "carol": (GEOLOCATION,),
    }
    for name, optout in people.items():
        ctx = _request(clock)
        rec = ctx.rec
        with pytest.raises(AccessDenied):
            authorize(
                session=session(name, optout),
                route="app",
                method="GET",
                path=f"/{name}",
                policy=cast(LivePolicy, policy),
                signer=cast(AssertionSigner, None),
                request=ctx,
                sample=sample,
            )
        # Decided (and recorded) the same way whatever the person chose.
        assert (rec.policy_version, rec.reason) == (3, Reason.NO_MATCHING_RULE)
    assert policy.authorizer.calls == 3
    await sample.flush()
    paths = sorted(s.path for s in await sample.recent(1))
    assert paths == ["/bob", "/carol"]


async def test_a_persons_own_token_is_decided_but_never_sampled(database: Database, clock: FakeClock) -> None:
    sample = DecisionSample(database, clock=clock)
    policy = Policy(DenyAll())
    for name, person in (("dana", True), ("ci-bot", False)):
        token = VerifiedToken(
            subject=name,
            principals=frozenset({f"user:{name}" if person else f"client:{name}"}),
            roles=(),
            routes=None,
            expires_at=clock.time() + 60,
            token_id="t",
            issuer="corp",
            person=person,
        )
        ctx = _request(clock)
        rec = ctx.rec
        with pytest.raises(InsufficientScope):
            authorize_client(
                client=token,
                route="app",
                method="GET",
                path=f"/{name}",
                policy=cast(LivePolicy, policy),
                signer=cast(AssertionSigner, None),
                request=ctx,
                sample=sample,
            )
        assert rec.reason == Reason.NO_MATCHING_RULE
    await sample.flush()
    assert [s.path for s in await sample.recent(1)] == ["/ci-bot"]
