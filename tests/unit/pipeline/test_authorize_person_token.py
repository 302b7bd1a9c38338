"""A person's access token (an identity provider's, ``users: linked``) is ``user:<name>`` without the
account's roles, also those the policy's ``g`` lines give it.

An attack run: with ``g, user:alice, deployers``, a token for alice issued to any application she had
authorised got 200 on ``POST /v1/deploy`` and ``deployers`` in ``X-Gateway-Roles``, while the same role
granted locally (``users.roles``, which a token never carries) gave 403 ``insufficient_scope``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import cast

import pytest

from gateway.authz.decision import Reason
from gateway.authz.index import PolicyIndex
from gateway.authz.live import LivePolicy
from gateway.authz.rules import parse_policy
from gateway.authz.sample import DecisionSample
from gateway.authz.store import PolicyStore
from gateway.clock import FakeClock
from gateway.identity.assertion import AssertionSigner
from gateway.identity.levels import AuthLevel
from gateway.identity.sessions import Session
from gateway.machine.verifier import VerifiedToken
from gateway.observe.record import RequestKind, RequestRecord
from gateway.pipeline.authorize import PolicyBehind, authorize, authorize_client
from gateway.pipeline.bearer import InsufficientScope
from gateway.pipeline.context import RequestContext
from gateway.settings.schema import PolicySettings

POLICY = """\
g, user:alice, deployers
p, deployers, api, /v1/deploy, POST, allow
g, user:alice, readers
p, readers, api, /v1/reports/*, GET|DELETE, allow
g, scope:corp:reports.read, reports-app
p, reports-app, api, /v1/reports/*, GET, allow
p, user:alice, api, /v1/profile, GET, allow
p, user:alice, api, /v1/reports/*, POST, allow
g, user:alice, suspended-from-billing
p, suspended-from-billing, api, /v1/billing/*, *, deny
p, scope:corp:billing, api, /v1/billing/*, GET, allow
"""


class Signer:
    """What the stage hands the assertion: the roles the upstream is told."""

    def __init__(self) -> None:
        self.roles: list[tuple[str, ...]] = []
        self.optouts: list[tuple[str, ...]] = []

    def assertion_for_client(
        self,
        client: str,
        token_id: str,
        route: str,
        roles: Sequence[str],
        expires_at: float,
        *,
        client_id: str,
        optout: tuple[str, ...] = (),
    ) -> str:
        self.roles.append(tuple(roles))
        self.optouts.append(optout)
        return "assertion"

    def assertion_for(self, session: Session, route: str, email: str | None, roles: Sequence[str]) -> str:
        self.roles.append(tuple(roles))
        return "assertion"


@pytest.fixture
def policy() -> LivePolicy:
    live = LivePolicy(cast(PolicyStore, None), PolicySettings())
    live.authorizer.swap(PolicyIndex.build(parse_policy(POLICY), version=1))
    return live


def token(*scopes: str, person: bool = True) -> VerifiedToken:
    name = "alice" if person else "corp:reporter"
    own = "user:alice" if person else "client:corp:reporter"
    return VerifiedToken(
        subject=name,
        principals=frozenset({own, *(f"scope:corp:{s}" for s in scopes)}),
        roles=(),
        routes=None,
        expires_at=2e9,
        token_id="t",
        issuer="corp",
        client_id="corp:low-trust-app",
        person=person,
    )


def session() -> Session:
    return Session(
        id_hash="0" * 64, family="f", user_id=1, username="alice", level=AuthLevel.TWO_FACTOR, factors=(),
        roles=(), created_at=0.0, last_seen=0.0, ip="192.0.2.1", user_agent="pytest", host="api.example.com",
    )  # fmt: skip


def request(clock: FakeClock, query: bytes = b"") -> RequestContext:
    ctx = RequestContext(RequestKind.HTTP, "GET")
    ctx.rec = RequestRecord(at=clock.time(), kind=RequestKind.HTTP, client_ip="192.0.2.1", user_agent="t")
    ctx.query = query
    return ctx


def as_token(
    policy: LivePolicy, client: VerifiedToken, method: str, path: str, clock: FakeClock, query: bytes = b""
) -> dict[bytes, bytes]:
    headers = authorize_client(
        client=client, route="api", method=method, path=path, policy=policy,
        signer=cast(AssertionSigner, Signer()), request=request(clock, query),
        sample=cast(DecisionSample, None),
    )  # fmt: skip
    return dict(headers)


def refused(policy: LivePolicy, client: VerifiedToken, method: str, path: str, clock: FakeClock) -> str:
    with pytest.raises(InsufficientScope) as err:
        as_token(policy, client, method, path, clock)
    return err.value.reason


def test_a_role_the_policy_links_to_the_person_does_not_come_with_their_token(
    policy: LivePolicy, clock: FakeClock
) -> None:
    # Signed in, alice deploys and the app is told she is a deployer ...
    signer = Signer()
    authorize(
        session=session(), route="api", method="POST", path="/v1/deploy", policy=policy,
        signer=cast(AssertionSigner, signer), request=request(clock), sample=cast(DecisionSample, None),
    )  # fmt: skip
    assert "deployers" in signer.roles[0]
    # ... her token, whatever application it was issued to, does not (the attack run: 200).
    assert refused(policy, token(), "POST", "/v1/deploy", clock) == Reason.NO_MATCHING_RULE
    assert refused(policy, token("reports.read"), "DELETE", "/v1/reports/1", clock) == Reason.NO_MATCHING_RULE
    # Asked again (now from the decision cache), still refused: the session's answer for the same
    # person on the same request is not the token's.
    assert refused(policy, token(), "POST", "/v1/deploy", clock) == Reason.NO_MATCHING_RULE


def test_the_roles_the_app_sees_are_the_tokens_not_the_persons(policy: LivePolicy, clock: FakeClock) -> None:
    headers = as_token(policy, token("reports.read"), "GET", "/v1/reports/1", clock)
    # What the application was granted (the scope's role), none of alice's (the attack run: deployers).
    assert headers[b"x-gateway-roles"] == b"reports-app"
    assert headers[b"x-gateway-user"] == b"alice"


def test_rules_naming_the_person_still_apply(policy: LivePolicy, clock: FakeClock) -> None:
    headers = as_token(policy, token(), "GET", "/v1/profile", clock)
    assert headers[b"x-gateway-roles"] == b""


def test_a_deny_through_the_persons_roles_still_refuses_their_token(
    policy: LivePolicy, clock: FakeClock
) -> None:
    # Fail closed: a role that takes something away from alice takes it from her tokens too, even
    # where a scope would allow it.
    assert refused(policy, token("billing"), "GET", "/v1/billing/x", clock) == Reason.POLICY_DENY
    client = token("billing", person=False)
    assert as_token(policy, client, "GET", "/v1/billing/x", clock)[b"x-gateway-user"] == b"corp:reporter"


def test_a_method_override_is_decided_without_the_roles_too(policy: LivePolicy, clock: FakeClock) -> None:
    # POST on the reports is alice's own; running it as DELETE (``_method``) would take readers' rules.
    assert as_token(policy, token(), "POST", "/v1/reports/1", clock)[b"x-gateway-user"] == b"alice"
    with pytest.raises(InsufficientScope) as err:
        as_token(policy, token(), "POST", "/v1/reports/1", clock, query=b"_method=DELETE")
    assert err.value.reason == str(Reason.NO_MATCHING_RULE)
    assert "DELETE" in str(err.value)


def test_a_worker_behind_the_policy_decides_no_token_either(policy: LivePolicy, clock: FakeClock) -> None:
    # A newer policy is known and not loaded: 503 for a person's token too (fail closed), before
    # anything is decided on the one in hand.
    policy.behind = True
    with pytest.raises(PolicyBehind):
        as_token(policy, token(), "GET", "/v1/profile", clock)
    assert policy.authorizer.cache.misses == 0


def test_the_persons_opt_outs_reach_the_assertion(policy: LivePolicy, clock: FakeClock) -> None:
    """What the person opted out of (looked up with the linked account) is handed to the signer: an
    attack run's objecting person reached the app through their token as if they had not objected."""
    signer = Signer()
    objecting = dataclasses.replace(token("reports.read"), optout=("policy_analytics",))
    authorize_client(
        client=objecting, route="api", method="GET", path="/v1/reports/1", policy=policy,
        signer=cast(AssertionSigner, signer), request=request(clock), sample=cast(DecisionSample, None),
    )  # fmt: skip
    assert signer.optouts == [("policy_analytics",)]
