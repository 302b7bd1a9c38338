"""The index against casbin on a 10,000-line generated policy and 100,000 generated requests.

Zero mismatches allowed. The policy and requests come from ``loadtests.policygen`` with fixed seeds;
the requests include trailing slashes, empty segments, ``/``, ``""``, unicode, line feeds, the paths
that a trailing ``/*`` hangs from, and paths that only regex patterns match. casbin is asked through :class:`Reference` (see its docstring for
why that is still casbin's answer on the whole policy; ``test_narrowing_is_exact`` checks it).
"""

from __future__ import annotations

import random

import pytest

from gateway.authz.index import MAX_HIERARCHY_LEVEL, PolicyIndex
from gateway.authz.rules import PolicyRules, parse_policy, subtree_root
from loadtests.policygen import GeneratedPolicy, Request, generate_policy, generate_requests
from tests.unit.authz.casbin_reference import Reference

pytestmark = pytest.mark.slow

POLICY_LINES = 10_000
REQUESTS = 100_000
SET_REQUESTS = 10_000
# Few distinct patterns (the same paths granted to many subjects) keep casbin within re's regex cache.
RESOURCES = 12


@pytest.fixture(scope="module")
def generated() -> GeneratedPolicy:
    return generate_policy(POLICY_LINES, seed=20240601, resources=RESOURCES)


@pytest.fixture(scope="module")
def rules(generated: GeneratedPolicy) -> PolicyRules:
    # Through the CSV text, as a policy file would arrive.
    return parse_policy(generated.rules.to_csv(), source="generated.csv")


@pytest.fixture(scope="module")
def index(rules: PolicyRules) -> PolicyIndex:
    return PolicyIndex.build(rules, 7)


def _mismatches(index: PolicyIndex, reference: Reference, requests: list[Request]) -> tuple[list[str], int]:
    wrong: list[str] = []
    allowed = 0
    for request in requests:
        ours = index.decide(request.principals, request.route, request.method, request.path)
        if len(request.principals) == 1:
            (subject,) = request.principals
        else:
            subject = reference.synthetic_subject(request.principals)
        theirs = reference.enforce(subject, request.route, request.path, request.method)
        allowed += theirs
        if ours.allowed != theirs:
            wrong.append(f"{request!r}: index {ours.explain()}, casbin {theirs}")
    return wrong, allowed


def test_generated_policy_has_every_shape(rules: PolicyRules, index: PolicyIndex) -> None:
    assert len(rules) >= POLICY_LINES
    objs = {rule.obj for rule in rules.policies}
    assert index.stats.fallback_patterns > 0
    assert any(":" in obj for obj in objs)
    assert any(obj.endswith("/*") for obj in objs)
    assert any(rule.is_deny for rule in rules.policies)
    assert any(rule.dom == "*" for rule in rules.policies)
    assert any(rule.act == "*" for rule in rules.policies)
    assert any("|" in rule.act for rule in rules.policies)
    # A role chain longer than casbin's hierarchy limit: the far end is out of reach.
    assert "chain12" not in index.roles_of("chain0")
    assert f"chain{MAX_HIERARCHY_LEVEL - 1}" in index.roles_of("chain0")


def test_requests_hit_the_paths_that_a_trailing_star_hangs_from(generated: GeneratedPolicy) -> None:
    # Those are matched only through pathMatch's root rule ("/res/*" covers "/res"), so the comparison
    # below must see many of them, with allow and deny rules behind them.
    roots = {
        root for rule in generated.rules.policies if (root := subtree_root(rule.obj)) and ":" not in root
    }
    hits = [r for r in generate_requests(generated, REQUESTS, seed=1) if r.path in roots]
    assert len(hits) > 0.01 * REQUESTS
    assert len({r.path for r in hits}) > 10


def test_single_principals_match_casbin(
    generated: GeneratedPolicy, rules: PolicyRules, index: PolicyIndex
) -> None:
    requests = generate_requests(generated, REQUESTS, seed=1)
    wrong, allowed = _mismatches(index, Reference(rules), requests)
    assert wrong == [], f"{len(wrong)} mismatches, first: {wrong[:10]}"
    # Both answers are well represented, so agreement means something.
    assert 0.15 * REQUESTS < allowed < 0.85 * REQUESTS


def test_principal_sets_match_casbin_through_a_synthetic_subject(
    generated: GeneratedPolicy, rules: PolicyRules, index: PolicyIndex
) -> None:
    requests = generate_requests(generated, SET_REQUESTS, seed=2, principal_sets=True)
    assert all(len(request.principals) >= 2 for request in requests)
    # One more level: the synthetic subject's own link to each principal.
    reference = Reference(rules, max_hierarchy_level=MAX_HIERARCHY_LEVEL + 1)
    wrong, allowed = _mismatches(index, reference, requests)
    assert wrong == [], f"{len(wrong)} mismatches, first: {wrong[:10]}"
    assert 0.15 * SET_REQUESTS < allowed < 0.95 * SET_REQUESTS


def test_narrowing_is_exact(generated: GeneratedPolicy, rules: PolicyRules) -> None:
    """The narrowed casbin answers like casbin on the whole policy (a sample: that is ~35 ms each)."""
    reference = Reference(rules)
    requests = random.Random(3).sample(generate_requests(generated, 5_000, seed=3), 60)
    for request in requests:
        (subject,) = request.principals
        args = (subject, request.route, request.path, request.method)
        assert reference.enforce(*args) == reference.enforce(*args, narrow=False), request
