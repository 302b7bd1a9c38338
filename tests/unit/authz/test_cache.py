"""The decision cache (bounded, counted) and the Authorizer's cache-then-index and swap."""

from __future__ import annotations

import pytest

from gateway.authz.cache import Authorizer, CacheKey, DecisionCache
from gateway.authz.decision import Decision, Reason
from gateway.authz.index import PolicyIndex
from gateway.authz.rules import parse_policy

NO = Decision(False, Reason.NO_MATCHING_RULE, None, None, 1)


def _key(n: int) -> CacheKey:
    return (1, frozenset({"user:a"}), "app", "GET", f"/{n}")


def test_get_counts_hits_and_misses() -> None:
    cache = DecisionCache(10)
    assert cache.get(_key(1)) is None
    cache.put(_key(1), NO)
    assert cache.get(_key(1)) is NO
    assert (cache.hits, cache.misses) == (1, 1)


def test_full_cache_drops_the_older_half() -> None:
    cache = DecisionCache(4)
    for n in range(4):
        cache.put(_key(n), NO)
    assert len(cache) == 4
    cache.put(_key(4), NO)
    assert len(cache) == 3
    assert [_key(n) in cache for n in range(5)] == [False, False, True, True, True]
    for n in range(5, 100):
        cache.put(_key(n), NO)
        assert len(cache) <= 4
    assert _key(99) in cache


def test_replacing_an_entry_when_full_evicts_nothing() -> None:
    cache = DecisionCache(2)
    cache.put(_key(1), NO)
    cache.put(_key(2), NO)
    cache.put(_key(2), NO)
    assert len(cache) == 2


def test_size_one_and_invalid_size() -> None:
    cache = DecisionCache(1)
    cache.put(_key(1), NO)
    cache.put(_key(2), NO)
    assert len(cache) == 1
    assert _key(2) in cache
    with pytest.raises(ValueError, match="at least 1"):
        DecisionCache(0)


def test_authorizer_caches_and_swaps() -> None:
    old = PolicyIndex.build(parse_policy("p, user:a, app, /*, GET, allow"), 1)
    new = PolicyIndex.build(parse_policy("p, user:a, app, /*, GET, deny"), 2)
    authorizer = Authorizer(old, max_entries=8)
    request = (frozenset({"user:a"}), "app", "GET", "/x")
    first = authorizer.decide(*request)
    assert first.allowed
    assert authorizer.decide(*request) is first
    assert (authorizer.cache.hits, authorizer.cache.misses) == (1, 1)
    authorizer.swap(new)
    assert len(authorizer.cache) == 0
    assert authorizer.index is new
    assert authorizer.version == 2
    after = authorizer.decide(*request)
    assert not after.allowed
    assert after.version == 2
    assert after.reason is Reason.POLICY_DENY


def test_entries_are_keyed_by_version() -> None:
    index = PolicyIndex.build(parse_policy("p, user:a, app, /*, GET, allow"), 1)
    authorizer = Authorizer(index)
    authorizer.decide(frozenset({"user:a"}), "app", "GET", "/x")
    assert (1, frozenset({"user:a"}), "app", "GET", "/x") in authorizer.cache


@pytest.mark.parametrize("token_first", [True, False])
def test_a_persons_token_and_a_session_never_share_an_entry(token_first: bool) -> None:
    """A person's access token is decided without the person's ``g`` roles: its answer and the answer
    for the same principals with those roles are two entries, whichever is asked first."""
    rules = parse_policy(
        "g, user:alice, deployers\np, deployers, api, /*, POST, allow\np, scope:corp:x, api, /*, GET, allow\n"
    )
    authorizer = Authorizer(PolicyIndex.build(rules, 1))
    alice = frozenset({"user:alice"})

    def token() -> bool:
        return authorizer.decide_without_roles(frozenset(), alice, "api", "POST", "/x").allowed

    def session() -> bool:
        return authorizer.decide(alice, "api", "POST", "/x").allowed

    for _ in range(2):
        if token_first:
            assert (token(), session()) == (False, True)
        else:
            assert (session(), token()) == (True, False)
    assert (authorizer.cache.hits, authorizer.cache.misses) == (2, 2)
    # The token's other principals alone, with or without the person: two entries as well.
    scope = frozenset({"scope:corp:x"})
    assert not authorizer.decide_without_roles(scope, alice, "api", "POST", "/x").allowed
    assert not authorizer.decide(scope, "api", "POST", "/x").allowed
    assert len(authorizer.cache) == 4
