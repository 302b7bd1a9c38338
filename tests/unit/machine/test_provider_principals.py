"""Principals of a provider's access token: scopes are named with the provider that granted them.

The attack: a second provider (a partner's, or a test realm anyone on the team administers) issues a
token with the scope a rule requires from the first; it must not match that rule.
"""

from __future__ import annotations

from gateway.authz.cache import Authorizer
from gateway.authz.index import PolicyIndex
from gateway.authz.rules import parse_policy
from gateway.machine.provider_principals import scope_principal, verified_token

POLICY = "p, scope:corp:reports.write, api, /reports/*, POST, allow\n"


def _principals(provider: str, scope: str) -> frozenset[str]:
    token = verified_token(
        provider=provider,
        claims={"client_id": "reporter", "scope": scope},
        person=None,
        token_id="t",
        expires_at=0.0,
    )
    return token.principals


def test_each_scope_is_named_with_its_provider() -> None:
    assert _principals("corp", "reports.read api:write") == {
        "client:corp:reporter",
        "scope:corp:reports.read",
        "scope:corp:api:write",
    }
    assert scope_principal("partner", "reports.write") == "scope:partner:reports.write"


def test_another_providers_scope_of_the_same_name_does_not_match() -> None:
    authorizer = Authorizer(PolicyIndex.build(parse_policy(POLICY), 1))
    corp = authorizer.decide(_principals("corp", "reports.write"), "api", "POST", "/reports/q3")
    partner = authorizer.decide(_principals("partner", "reports.write"), "api", "POST", "/reports/q3")
    assert corp.allowed
    assert not partner.allowed
