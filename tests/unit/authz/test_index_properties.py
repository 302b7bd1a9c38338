"""Properties of the index on generated small policies: casbin's answer, monotonicity, deny wins, cache."""

from __future__ import annotations

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gateway.authz.cache import Authorizer
from gateway.authz.decision import Reason
from gateway.authz.index import MAX_HIERARCHY_LEVEL, PolicyIndex, literal_prefix
from gateway.authz.model import casbin_enforcer
from gateway.authz.rules import PolicyError, PolicyRules, Rule, path_match
from gateway.pipeline.route import _prefix_matches
from tests.unit.authz.strategies import PRINCIPALS, p_rules, policies, principal_sets, requests

Request = tuple[frozenset[str], str, str, str]
SLOW = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _casbin(policy: PolicyRules, request: Request) -> bool:
    """casbin on the whole policy; a principal set through a synthetic subject linked to each member."""
    principals, route, method, path = request
    if len(principals) == 1:
        (subject,) = principals
        return bool(casbin_enforcer(policy).enforce(subject, route, path, method))
    subject = "synthetic:request"
    linked = policy.with_rules(*(Rule.link(subject, principal) for principal in sorted(principals)))
    enforcer = casbin_enforcer(linked, max_hierarchy_level=MAX_HIERARCHY_LEVEL + 1)
    return bool(enforcer.enforce(subject, route, path, method))


@settings(SLOW, max_examples=300)
@given(policy=policies(), request=requests())
def test_index_answers_like_casbin(policy: PolicyRules, request: Request) -> None:
    decision = PolicyIndex.build(policy, 1).decide(*request)
    assert decision.allowed == _casbin(policy, request), decision.explain()


@settings(SLOW, max_examples=200)
@given(policy=policies(), request=requests(), data=st.data())
def test_principals_without_roles_answer_like_casbin_on_the_split_policy(
    policy: PolicyRules, request: Request, data: st.DataObject
) -> None:
    """A person's access token (``without_roles``): allowed iff an allow rule matches ``principals`` or a
    role they reach, or names a principal of ``own`` itself, and no deny rule matches anything either
    set reaches. Each part is casbin's answer on the allow rules (with the ``g`` lines, then without)
    or on the deny rules (turned into allows), with the ``g`` lines."""
    principals, route, method, path = request
    # Mostly principals with g lines (the roles they reach are what is left out), and a few rules that
    # match every request, so that who the subjects are decides more often than where the path goes.
    members = sorted({link.member for link in policy.links} | {"user:a"})
    own = data.draw(st.frozensets(st.sampled_from(members), min_size=1, max_size=2) | principal_sets())
    subjects = st.sampled_from((*PRINCIPALS, "r4"))
    wide = data.draw(st.lists(st.tuples(subjects, st.sampled_from(("allow", "allow", "deny"))), max_size=3))
    policy = policy.with_rules(*(Rule("p", (sub, "*", "/*", "*", effect)) for sub, effect in wide))
    allows = tuple(rule for rule in policy.policies if not rule.is_deny)
    denies = tuple(Rule.allow(r.sub, r.dom, r.obj, r.act) for r in policy.policies if r.is_deny)

    def matches(rules: tuple[Rule, ...], links: tuple[Rule, ...], who: frozenset[str]) -> bool:
        return bool(rules) and _casbin(PolicyRules(rules, links), (who, route, method, path))

    expected = (matches(allows, policy.links, principals) or matches(allows, (), own)) and not matches(
        denies, policy.links, principals | own
    )
    decision = PolicyIndex.build(policy, 1).decide(principals, route, method, path, own)
    assert decision.allowed == expected, decision.explain()


@SLOW
@given(policy=policies(), rule=p_rules(), request=requests())
def test_adding_an_allow_never_turns_allow_into_deny(
    policy: PolicyRules, rule: Rule, request: Request
) -> None:
    allow = Rule.allow(rule.sub, rule.dom, rule.obj, rule.act)
    before = PolicyIndex.build(policy, 1).decide(*request)
    after = PolicyIndex.build(policy.with_rules(allow), 2).decide(*request)
    assert after.allowed or not before.allowed


@SLOW
@given(policy=policies(), rule=p_rules(), request=requests())
def test_adding_a_deny_never_turns_deny_into_allow(policy: PolicyRules, rule: Rule, request: Request) -> None:
    deny = Rule.deny(rule.sub, rule.dom, rule.obj, rule.act)
    before = PolicyIndex.build(policy, 1).decide(*request)
    after = PolicyIndex.build(policy.with_rules(deny), 2).decide(*request)
    assert before.allowed or not after.allowed


@SLOW
@given(policy=policies(), request=requests(), data=st.data())
def test_a_matching_deny_always_denies(policy: PolicyRules, request: Request, data: st.DataObject) -> None:
    principals, route, method, path = request
    assume(path.startswith("/") and "\n" not in path)
    subject = data.draw(st.sampled_from(sorted(principals)))
    dom = data.draw(st.sampled_from((route, "*")))
    deny = Rule.deny(
        subject, dom, "/*", data.draw(st.sampled_from(("*", method if method.isupper() else "*")))
    )
    decision = PolicyIndex.build(policy.with_rules(deny), 3).decide(*request)
    assert not decision.allowed
    assert decision.reason is Reason.POLICY_DENY
    assert decision.rule is not None
    assert decision.rule.is_deny


@given(policy=policies(), batch=st.lists(requests(), min_size=1, max_size=12), size=st.integers(1, 4))
def test_cache_answers_like_the_index(policy: PolicyRules, batch: list[Request], size: int) -> None:
    index = PolicyIndex.build(policy, 5)
    authorizer = Authorizer(index, max_entries=size)
    for request in batch + batch[::-1] + batch:
        # The authorizer decides as the gateway does: a HEAD also needs what a GET needs.
        assert authorizer.decide(*request) == index.decide_request(*request)
        assert len(authorizer.cache) <= size
    assert authorizer.cache.hits + authorizer.cache.misses == 3 * len(batch)


@given(old=policies(), new=policies(), batch=st.lists(requests(), min_size=1, max_size=8))
def test_swap_makes_the_new_policy_decide(old: PolicyRules, new: PolicyRules, batch: list[Request]) -> None:
    authorizer = Authorizer(PolicyIndex.build(old, 1))
    for request in batch:
        authorizer.decide(*request)
    fresh = PolicyIndex.build(new, 2)
    authorizer.swap(fresh)
    assert authorizer.version == 2
    for request in batch:
        decision = authorizer.decide(*request)
        # decide_request: the authorizer answers as the gateway decides (a HEAD needs the GET too).
        assert decision == fresh.decide_request(*request)
        assert decision.version == 2


PATTERN_TEXT = st.text(alphabet="/ab:.*+?{}[]()|^$\\1,", max_size=10).map(lambda t: "/" + t)
PATH_TEXT = st.text(alphabet="/ab:.*+?{}[]()|^$\\1\n", max_size=10)


def _accepted(pattern: str) -> bool:
    try:
        PolicyRules.from_rules([Rule.allow("a", "b", pattern, "GET")])
    except PolicyError:
        return False  # not a regex casbin can compile: the parser rejects the rule
    return True


@settings(max_examples=2000)
@given(pattern=PATTERN_TEXT, path=PATH_TEXT)
def test_literal_prefix_is_necessary_for_a_path_match(pattern: str, path: str) -> None:
    if _accepted(pattern) and path_match(path, pattern):
        assert path.startswith(literal_prefix(pattern))


@settings(max_examples=2000)
@given(pattern=PATTERN_TEXT, path=PATH_TEXT)
def test_an_accepted_pattern_never_fails_a_request(pattern: str, path: str) -> None:
    # A pattern whose "/*" root alone is no valid regex would raise on every request it is asked about.
    if _accepted(pattern):
        path_match(path, pattern)


@given(
    prefix=st.lists(st.sampled_from(("a", "b", "ab", "admin", "administrator")), max_size=3),
    path=st.lists(st.sampled_from(("a", "b", "ab", "", "admin", "administrator")), max_size=4),
)
def test_a_trailing_star_means_what_a_route_path_prefix_means(prefix: list[str], path: list[str]) -> None:
    # Two independent implementations of "this path and everything below it, on segment boundaries":
    # the router's prefix match (on canonical paths) and a policy's "/*".
    route_path = "/" + "/".join(prefix)
    request_path = "/" + "/".join(path)
    expected = _prefix_matches(route_path, request_path)
    assert path_match(request_path, route_path.rstrip("/") + "/*") is expected
    assert (
        PolicyIndex.build(PolicyRules((Rule.allow("a", "app", route_path.rstrip("/") + "/*", "*"),)), 1)
        .decide(frozenset({"a"}), "app", "GET", request_path)
        .allowed
        is expected
    )
