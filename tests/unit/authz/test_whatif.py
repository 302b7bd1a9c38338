"""What-if: a draft policy replayed over a decision sample, checked against casbin's verdicts."""

from __future__ import annotations

import pytest

from gateway.authz.index import PolicyIndex
from gateway.authz.model import casbin_enforcer
from gateway.authz.rules import PolicyRules, parse_policy
from gateway.authz.whatif import Sampled, what_if

LIVE = """\
p, admin, *, /*, *, allow
p, authenticated, app, /public/*, GET, allow
p, user:alice, app, /reports/:id, GET, allow
g, group:ops, admin
"""
# alice loses her reports; everyone signed in may now also HEAD the public pages; ops keep admin.
DRAFT = """\
p, admin, *, /*, *, allow
p, authenticated, app, /public/*, GET|HEAD, allow
g, group:ops, admin
"""

ALICE = frozenset({"user:alice", "authenticated"})
BOB = frozenset({"user:bob", "authenticated"})
OPS = frozenset({"user:carol", "authenticated", "group:ops"})

SAMPLE = [
    Sampled(ALICE, "app", "GET", "/reports/7", 40),
    Sampled(ALICE, "app", "GET", "/public/a", 5),
    Sampled(BOB, "app", "HEAD", "/public/a", 3),
    Sampled(BOB, "app", "GET", "/reports/7", 2),  # denied before and after
    Sampled(OPS, "admin", "POST", "/users", 9),
]


def index(text: str, version: int) -> PolicyIndex:
    return PolicyIndex.build(parse_policy(text), version)


def test_flips_both_ways_with_counts_per_route() -> None:
    report = what_if(index(LIVE, 4), index(DRAFT, 5), SAMPLE)
    assert report.live_version == 4
    assert (report.requests, report.shapes) == (59, 5)
    assert (report.to_deny, report.to_allow) == (40, 3)
    assert [(f.route, f.method, f.path, f.count, f.to_deny) for f in report.flips] == [
        ("app", "GET", "/reports/7", 40, True),
        ("app", "HEAD", "/public/a", 3, False),
    ]
    alice = report.flips[0]
    assert alice.principals == ("authenticated", "user:alice")
    assert alice.live.rule is not None
    assert alice.live.rule.line == 3
    assert alice.draft.rule is None  # nothing allows it under the draft
    routes = {r.route: (r.requests, r.to_deny, r.to_allow) for r in report.routes}
    assert routes == {"app": (50, 40, 3), "admin": (9, 0, 0)}
    assert report.routes[0].route == "app"  # the route with flips first
    assert report.changes_anything


def test_the_same_policy_flips_nothing() -> None:
    report = what_if(index(LIVE, 4), index(LIVE, 4), SAMPLE)
    assert not report.changes_anything
    assert report.flips == ()
    assert report.omitted == 0
    assert report.requests == 59


def test_the_flip_list_is_bounded_largest_first() -> None:
    sample = [Sampled(ALICE, "app", "GET", f"/reports/{i}", i + 1) for i in range(10)]
    report = what_if(index(LIVE, 1), index(DRAFT, 2), sample, limit=3)
    assert [f.count for f in report.flips] == [10, 9, 8]
    assert report.omitted == 7
    assert report.to_deny == sum(range(1, 11))  # the totals count every flip, listed or not
    with pytest.raises(ValueError, match="limit"):
        what_if(index(LIVE, 1), index(DRAFT, 2), sample, limit=-1)


def test_verdicts_agree_with_casbin() -> None:
    # The what-if uses the data plane's index; casbin is the reference semantics it must match.
    for text in (LIVE, DRAFT):
        rules: PolicyRules = parse_policy(text)
        enforcer = casbin_enforcer(rules)
        built = PolicyIndex.build(rules, 1)
        for shape in SAMPLE:
            expected = any(
                enforcer.enforce(p, shape.route, shape.path, shape.method) for p in shape.principals
            )
            assert built.decide(shape.principals, shape.route, shape.method, shape.path).allowed == expected
