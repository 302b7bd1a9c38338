"""The index on hand-picked edge cases, each also asked of casbin; decisions carry rule and reason."""

from __future__ import annotations

import pytest

from gateway.authz.decision import Reason
from gateway.authz.index import MAX_HIERARCHY_LEVEL, PolicyIndex, is_trie_pattern
from gateway.authz.model import casbin_enforcer
from gateway.authz.rules import PolicyRules, Rule, parse_policy

# (pattern, path, matches): what pathMatch does (keyMatch2, including where it is regex, plus a trailing
# "/*" covering the path it hangs from).
PATTERN_CASES = [
    ("/a", "/a", True),
    ("/a", "/a/", False),
    ("/a/", "/a", False),
    ("/", "/", True),
    ("/", "", False),
    ("/a//b", "/a//b", True),
    ("/a//b", "/a/b", False),
    ("/*", "/", True),
    ("/*", "", False),
    ("/*", "/x/y/z", True),
    ("/*", "x", False),
    ("/a/*", "/a", True),
    ("/a/*", "/a/", True),
    ("/a/*", "/a/b/c", True),
    ("/a/*", "/ab", False),
    ("/admin/*", "/administrator", False),
    ("/admin/*", "/admin", True),
    ("/a/b/*", "/a/b", True),
    ("/a/b/*", "/a", False),
    ("/a/b/*", "/a/bc", False),
    ("/a/*", "/", False),
    ("/a/*", "", False),
    ("//*", "/", True),
    ("/a//*", "/a//x", True),
    ("/a//*", "/a/x", False),
    ("/:id", "/42", True),
    ("/:id", "/", False),
    ("/:id", "/4/2", False),
    ("/a/:id", "/a/", False),
    ("/a/:id/*", "/a/1/", True),
    ("/a/:id/*", "/a/1", True),
    ("/a/:id/*", "/a/", False),
    ("/a/:id/*", "/a", False),
    ("/:a/:b", "/x/y", True),
    ("/:a/:b", "/x//", False),
    ("/f/:name.json", "/f/anything", True),
    ("/f/:*", "/f/x", True),
    ("/ü/:x", "/ü/ö", True),
    ("/a.b", "/aXb", True),
    ("/a.b", "/a.b", True),
    ("/a*", "/", True),
    ("/a*", "/aaa", True),
    ("/x/*/y", "/x/1/2/y", True),
    ("/x/*/y", "/x/y", False),
    # The root of a regex pattern's "/*" is matched with keyMatch2 too (the index asks path_match).
    ("/a.b/*", "/aXb", True),
    ("/a.b/*", "/a.b/c", True),
    ("/a.b/*", "/a.bc", False),
    ("/x/*/*", "/x/1", True),
    ("/x/*/*", "/x", False),
    ("/a*/*", "/aa", True),
    ("/a*/*", "/", True),
    ("/v[12]", "/v2", True),
    ("/a:b", "/aZ", True),
    ("/a/:", "/a/:", True),
    ("/a/:", "/a/b", False),
    ("/(a|b)", "/b", True),
    ("/a/?", "/a", True),
    # A line feed: "$" also matches before a final "\n", "." never matches one.
    ("/a", "/a\n", True),
    ("/a/*", "/a/x\n", True),
    ("/a/*", "/a/x\ny", False),
    ("/a/*", "/a\n", True),
    ("/a/*", "/a/\n", True),
    ("/a/:id/*", "/a/x\ny", True),
    ("/a/b/*", "/a\n/b", False),
    ("/a/:id", "/a/x\ny", True),
    ("/:id", "/\n", True),
]


@pytest.mark.parametrize(("pattern", "path", "expected"), PATTERN_CASES)
def test_path_patterns_match_like_key_match2(pattern: str, path: str, expected: bool) -> None:
    rules = PolicyRules((Rule.allow("user:a", "app", pattern, "GET"),))
    assert casbin_enforcer(rules).enforce("user:a", "app", path, "GET") is expected, "case is wrong"
    assert PolicyIndex.build(rules, 1).decide(frozenset({"user:a"}), "app", "GET", path).allowed is expected


@pytest.mark.parametrize(
    ("pattern", "indexed"),
    [("/a/:id/*", True), ("/", True), ("/a.b", False), ("/a*", False), ("/x/*/y", False), ("/a:b", False)],
)
def test_only_plain_patterns_go_into_the_trie(pattern: str, indexed: bool) -> None:
    assert is_trie_pattern(pattern) is indexed


POLICY = parse_policy(
    """\
p, editor, wiki, /pages/*, GET|HEAD, allow
p, editor, wiki, /pages/:page/edit, POST, allow
p, group:eng, *, /status, GET, allow
p, contractor, *, /pages/secret/*, *, deny
p, authenticated, echo, /*, *, allow
g, user:alice, editor
g, user:carol, contractor
g, contractor, editor
"""
)
INDEX = PolicyIndex.build(POLICY, 4)


@pytest.mark.parametrize(
    ("principals", "route", "method", "path", "allowed", "reason", "line"),
    [
        ({"user:alice"}, "wiki", "GET", "/pages/home", True, Reason.POLICY_ALLOW, 1),
        ({"user:alice"}, "wiki", "HEAD", "/pages/home", True, Reason.POLICY_ALLOW, 1),
        ({"user:alice"}, "wiki", "DELETE", "/pages/home", False, Reason.NO_MATCHING_RULE, None),
        ({"user:alice"}, "wiki", "POST", "/pages/home/edit", True, Reason.POLICY_ALLOW, 2),
        ({"user:alice"}, "grafana", "GET", "/pages/home", False, Reason.NO_MATCHING_RULE, None),
        ({"user:carol"}, "wiki", "GET", "/pages/home", True, Reason.POLICY_ALLOW, 1),
        ({"user:carol"}, "wiki", "GET", "/pages/secret/x", False, Reason.POLICY_DENY, 4),
        ({"user:alice", "contractor"}, "wiki", "GET", "/pages/secret/x", False, Reason.POLICY_DENY, 4),
        ({"user:alice"}, "wiki", "GET", "/pages/secret/x", True, Reason.POLICY_ALLOW, 1),
        ({"user:bob", "group:eng"}, "hr", "GET", "/status", True, Reason.POLICY_ALLOW, 3),
        ({"user:bob"}, "echo", "PUT", "/anything", False, Reason.NO_MATCHING_RULE, None),
        ({"user:bob", "authenticated"}, "echo", "PUT", "/anything", True, Reason.POLICY_ALLOW, 5),
        ({"editor"}, "wiki", "GET", "/pages/x", True, Reason.POLICY_ALLOW, 1),
        ({"user:alice"}, "*", "GET", "/pages/x", False, Reason.NO_MATCHING_RULE, None),
        ({"user:alice"}, "wiki", "get", "/pages/x", False, Reason.NO_MATCHING_RULE, None),
    ],
)
def test_decisions(
    principals: set[str], route: str, method: str, path: str, allowed: bool, reason: Reason, line: int | None
) -> None:
    decision = INDEX.decide(frozenset(principals), route, method, path)
    assert decision.allowed is allowed
    assert decision.reason is reason
    assert (decision.rule.line if decision.rule else None) == line
    assert decision.principal == (decision.rule.sub if decision.rule else None)
    assert decision.version == 4


def test_the_first_deny_in_policy_order_is_reported() -> None:
    rules = parse_policy("p, a, app, /x/*, *, deny\np, b, app, /*, GET, deny\np, a, app, /*, *, allow\n")
    decision = PolicyIndex.build(rules, 1).decide(frozenset({"b", "a"}), "app", "GET", "/x/y")
    assert decision.rule is not None
    assert decision.rule.line == 1


def test_empty_policy_denies_with_no_policy() -> None:
    decision = PolicyIndex.build(PolicyRules(), 0).decide(frozenset({"admin"}), "app", "GET", "/")
    assert not decision.allowed
    assert decision.reason is Reason.NO_POLICY


def test_role_closure_stops_at_casbins_hierarchy_limit() -> None:
    chain = [Rule.link(f"r{i}", f"r{i + 1}") for i in range(12)]
    rules = PolicyRules(
        (Rule.allow("r9", "app", "/*", "*"), Rule.allow("r10", "app", "/x", "*")), tuple(chain)
    )
    index = PolicyIndex.build(rules, 1)
    assert index.roles_of("r0") == {f"r{i}" for i in range(MAX_HIERARCHY_LEVEL)}
    enforcer = casbin_enforcer(rules)
    for path in ("/x", "/y"):
        ours = index.decide(frozenset({"r0"}), "app", "GET", path).allowed
        assert ours == enforcer.enforce("r0", "app", path, "GET")
    assert index.decide(frozenset({"r0"}), "app", "GET", "/y").allowed
    assert index.decide(frozenset({"r1"}), "app", "GET", "/x").allowed


def test_cycles_terminate() -> None:
    rules = parse_policy("p, b, app, /*, *, allow\ng, a, b\ng, b, a\ng, c, c\n")
    index = PolicyIndex.build(rules, 1)
    assert index.decide(frozenset({"a"}), "app", "GET", "/").allowed
    assert not index.decide(frozenset({"c"}), "app", "GET", "/").allowed


def test_stats() -> None:
    rules = parse_policy("p, a, app, /x/*, *, allow\np, a, *, /y.z, GET, allow\n")
    stats = PolicyIndex.build(rules, 1).stats
    assert (stats.rules, stats.links, stats.trie_patterns, stats.fallback_patterns, stats.domains) == (
        2,
        0,
        1,
        1,
        2,
    )


def test_explain() -> None:
    allowed = INDEX.decide(frozenset({"user:alice"}), "wiki", "GET", "/pages/home")
    assert allowed.explain() == (
        "allowed [policy-allow] by rule (line 1) 'p, editor, wiki, /pages/*, GET|HEAD, allow' for editor; "
        "policy version 4"
    )
    denied = INDEX.decide(frozenset({"user:carol"}), "wiki", "GET", "/pages/secret/")
    assert denied.explain().startswith(
        "denied [policy-deny] by rule (line 4) 'p, contractor, *, /pages/secret/*"
    )
    nothing = INDEX.decide(frozenset({"user:x"}), "wiki", "GET", "/")
    assert nothing.explain() == "denied [no-matching-rule]: no rule matches (default deny); policy version 4"
    empty = PolicyIndex.build(PolicyRules(), 0).decide(frozenset({"a"}), "w", "GET", "/")
    assert "no permission rules" in empty.explain()


HEAD_POLICY = parse_policy(
    "p, authenticated, app, /*, *, allow\n"
    "p, dev, app, /export/*, GET, deny\n"
    "p, authenticated, app, /docs/*, GET|HEAD, allow\n"
    "p, authenticated, app, /probe, HEAD, allow\n"
)


@pytest.mark.parametrize(
    ("principals", "path", "allowed"),
    [
        ({"dev"}, "/export/payroll", False),  # GET is denied: HEAD runs the same handler
        ({"ops"}, "/export/payroll", True),
        ({"dev"}, "/docs/x", True),
        ({"dev"}, "/other", True),
    ],
)
def test_a_head_request_needs_what_a_get_of_the_path_needs(
    principals: set[str], path: str, allowed: bool
) -> None:
    """Servers run their GET handler for a HEAD: a deny of GET let HEAD through to it (an attack run)."""
    index = PolicyIndex.build(HEAD_POLICY, 1)
    who = frozenset({"authenticated", *principals})
    decision = index.decide_request(who, "app", "HEAD", path)
    assert decision.allowed is allowed
    if not allowed:
        assert decision.reason is Reason.POLICY_DENY
        assert decision.rule is not None
        assert decision.rule.fields[-1] == "deny"
    # decide() stays casbin's answer for the method as given; other methods are decided as before.
    assert index.decide(who, "app", "HEAD", path).allowed
    assert index.decide_request(who, "app", "POST", path) == index.decide(who, "app", "POST", path)


PERSON_POLICY = parse_policy(
    "g, user:alice, deployers\n"
    "g, deployers, release\n"
    "p, release, api, /v1/deploy, POST, allow\n"
    "p, user:alice, api, /v1/profile, GET, allow\n"
    "g, user:alice, no-billing\n"
    "p, no-billing, api, /v1/billing/*, *, deny\n"
    "g, scope:corp:billing, billing\n"
    "p, billing, api, /v1/billing/*, GET, allow\n"
    "p, user:alice, api, /v1/own.*, GET, allow\n"
)
PERSON_INDEX = PolicyIndex.build(PERSON_POLICY, 1)


@pytest.mark.parametrize(
    ("principals", "method", "path", "reason", "line"),
    [
        # The roles the person's g lines reach (directly or further up) allow nothing ...
        (set(), "POST", "/v1/deploy", Reason.NO_MATCHING_RULE, None),
        (set(), "HEAD", "/v1/deploy", Reason.NO_MATCHING_RULE, None),
        # ... the rules that name the person do (in the trie and in the matcher's fallback) ...
        (set(), "GET", "/v1/profile", Reason.POLICY_ALLOW, 4),
        (set(), "GET", "/v1/own.json", Reason.POLICY_ALLOW, 9),
        # ... and so do the roles of the other principals (a scope's).
        ({"scope:corp:reports"}, "GET", "/v1/profile", Reason.POLICY_ALLOW, 4),
        # The denies of the person's roles still refuse (fail closed), even where a scope allows.
        ({"scope:corp:billing"}, "GET", "/v1/billing/x", Reason.POLICY_DENY, 6),
    ],
)
def test_principals_without_roles(
    principals: set[str], method: str, path: str, reason: Reason, line: int | None
) -> None:
    """A person's access token is the linked account without its roles (an attack run: its token, issued
    to any application, got what ``g, user:alice, deployers`` gives her)."""
    alice = frozenset({"user:alice"})
    decision = PERSON_INDEX.decide_request(frozenset(principals), "api", method, path, alice)
    assert decision.reason is reason
    assert (decision.rule.line if decision.rule else None) == line


def test_without_roles_only_ever_takes_allows_away() -> None:
    # Signed in, alice is a deployer; a billing scope alone reads billing. Neither with her token.
    alice = frozenset({"user:alice"})
    assert PERSON_INDEX.decide(alice, "api", "POST", "/v1/deploy").allowed
    assert not PERSON_INDEX.decide(frozenset(), "api", "POST", "/v1/deploy", alice).allowed
    scope = frozenset({"scope:corp:billing"})
    assert PERSON_INDEX.decide(scope, "api", "GET", "/v1/billing/x").allowed
    assert not PERSON_INDEX.decide(scope, "api", "GET", "/v1/billing/x", alice).allowed
