"""A POST that names another method in ``_method`` (Laravel, Symfony, Rails run it as that method) is
decided for that method too: a re-attack run deleted with ``POST /x/1?_method=DELETE`` where the policy
allowed POST and refused DELETE."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import pytest

from gateway.authz.decision import Decision, Reason
from gateway.authz.live import LivePolicy
from gateway.authz.sample import DecisionSample
from gateway.identity.assertion import AssertionSigner
from gateway.identity.levels import AuthLevel
from gateway.identity.sessions import Session
from gateway.observe.record import RequestKind
from gateway.pipeline.authorize import AccessDenied, authorize
from gateway.pipeline.context import RequestContext
from gateway.pipeline.overrides import method_overrides


@pytest.mark.parametrize(
    ("query", "methods"),
    [
        (b"", set()),
        (b"_method=DELETE", {"DELETE"}),
        (b"a=1&_method=put&b=2", {"PUT"}),
        (b"%5Fmethod=patch", {"PATCH"}),
        (b"%5fMETHOD=+delete+", {"DELETE"}),
        (b"_method=POST", set()),
        (b"_method=DELETE&_method=PUT", {"DELETE", "PUT"}),  # whichever the app reads, both are decided
        (b"x_method=DELETE&method=PUT&_methods=GET", set()),
        # PHP reads ".", " " and an unclosed "[" in a key as "_" (a re-attack run, through Laravel).
        (b".method=DELETE", {"DELETE"}),
        (b"%2Emethod=PUT", {"PUT"}),
        (b"[method=PATCH", {"PATCH"}),
        (b"+method=DELETE", {"DELETE"}),
        # PHP drops a name's leading spaces and reads it as a C string (cut at its first NUL).
        (b"%20_method=DELETE", {"DELETE"}),
        (b"++%20_method=PUT", {"PUT"}),
        (b"_method%00x=PATCH", {"PATCH"}),
        # ASP.NET MVC reads the override header's name as a POST's query parameter or form field too.
        (b"X-HTTP-Method-Override=DELETE", {"DELETE"}),
        (b"x-http-method=PUT", {"PUT"}),
        (b"X-Method-Override=PATCH", {"PATCH"}),
    ],
)
def test_the_methods_a_query_asks_for(query: bytes, methods: set[str]) -> None:
    assert method_overrides(query) == methods


@dataclass
class ByMethod:
    """A policy that allows the methods given, on every path."""

    allowed: frozenset[str]
    asked: list[str] = field(default_factory=list)

    def decide(self, principals: frozenset[str], route: str, method: str, path: str) -> Decision:
        self.asked.append(method)
        ok = method in self.allowed
        reason = Reason.POLICY_ALLOW if ok else Reason.NO_MATCHING_RULE
        return Decision(allowed=ok, reason=reason, rule=None, principal=None, version=1)


@dataclass
class Policy:
    authorizer: ByMethod
    behind: bool = False

    def roles_for(self, principals: frozenset[str]) -> tuple[str, ...]:
        return ()


class Signer:
    def assertion_for(self, *_args: object) -> str:
        return "a.b.c"


def _session() -> Session:
    return Session(
        id_hash="0" * 64, family="f", user_id=1, username="ann", level=AuthLevel.TWO_FACTOR, factors=(),
        roles=(), created_at=0.0, last_seen=0.0, ip="192.0.2.1", user_agent="pytest", host="app.example.com",
    )  # fmt: skip


def _authorize(policy: Policy, method: str, query: bytes) -> RequestContext:
    ctx = RequestContext(RequestKind.HTTP, method)
    ctx.query = query
    authorize(
        session=_session(), route="app", method=method, path="/x/1", policy=cast(LivePolicy, policy),
        signer=cast(AssertionSigner, Signer()), request=ctx, sample=cast(DecisionSample, None),
    )  # fmt: skip
    return ctx


def test_a_post_is_decided_as_the_method_it_names_too() -> None:
    policy = Policy(ByMethod(frozenset({"GET", "POST"})))
    _authorize(policy, "POST", b"a=1")
    with pytest.raises(AccessDenied, match="run it as DELETE") as caught:
        _authorize(policy, "POST", b"_method=DELETE")
    assert caught.value.reason == Reason.NO_MATCHING_RULE
    # Allowed when the policy allows that method too; a GET is never overridden by those frameworks.
    _authorize(Policy(ByMethod(frozenset({"POST", "DELETE"}))), "POST", b"_method=DELETE")
    looked = Policy(ByMethod(frozenset({"GET"})))
    _authorize(looked, "GET", b"_method=DELETE")
    assert looked.authorizer.asked == ["GET"]


def test_an_allowed_post_leaves_its_body_to_the_proxy_stage() -> None:
    """What the body names is decided as the proxy reads it: the stage hands over the check."""
    policy = Policy(ByMethod(frozenset({"GET", "POST"})))
    ctx = _authorize(policy, "POST", b"")
    assert ctx.overrides is not None
    ctx.overrides.check(frozenset({"GET"}))
    with pytest.raises(AccessDenied, match="run it as DELETE"):
        ctx.overrides.check(frozenset({"DELETE"}))
    assert _authorize(policy, "GET", b"").overrides is None
