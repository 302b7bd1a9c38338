"""The decision cache and the :class:`Authorizer` every request asks (cache first, then the index).

Entries are keyed by the policy version, so a new policy can never be answered from an old decision;
swapping the index also drops the cache (the old entries could never be read again anyway).
"""

from __future__ import annotations

from itertools import islice

from gateway.authz.decision import Decision
from gateway.authz.index import PolicyIndex

__all__ = ["Authorizer", "CacheKey", "DecisionCache"]

# (policy version, principals, route, method, path), and for a person's access token (principals,
# then those it speaks for without their roles, :meth:`Authorizer.decide_without_roles`) a 6-tuple: never
# equal to a session's key, so one's (role-expanded) answer is never read for the other.
CacheKey = (
    tuple[int, frozenset[str], str, str, str] | tuple[int, frozenset[str], str, str, str, frozenset[str]]
)


class DecisionCache:
    """A bounded in-process map from request to decision.

    When full, the older half of the entries is dropped (insertion order): one O(n) rebuild per n/2
    insertions, O(1) amortised, and lookups stay a plain dict lookup.
    """

    __slots__ = ("_entries", "hits", "max_entries", "misses")

    def __init__(self, max_entries: int = 100_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._entries: dict[CacheKey, Decision] = {}
        self.hits = 0
        self.misses = 0

    def get(self, key: CacheKey) -> Decision | None:
        """The cached decision, counting a hit or a miss."""
        found = self._entries.get(key)
        if found is None:
            self.misses += 1
        else:
            self.hits += 1
        return found

    def put(self, key: CacheKey, decision: Decision) -> None:
        entries = self._entries
        if len(entries) >= self.max_entries and key not in entries:
            keep = len(entries) // 2
            self._entries = entries = dict(islice(entries.items(), len(entries) - keep, None))
        entries[key] = decision

    def clear(self) -> None:
        self._entries = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries


class Authorizer:
    """The current :class:`PolicyIndex` with a :class:`DecisionCache` in front of it.

    :meth:`swap` replaces the index with one attribute assignment: a request that already read the
    old index finishes with it (and caches under the old version, which no later request asks for).
    """

    __slots__ = ("_index", "cache")

    def __init__(self, index: PolicyIndex, *, max_entries: int = 100_000) -> None:
        self._index = index
        self.cache = DecisionCache(max_entries)

    @property
    def index(self) -> PolicyIndex:
        return self._index

    @property
    def version(self) -> int:
        return self._index.version

    def decide(self, principals: frozenset[str], route: str, method: str, path: str) -> Decision:
        """Decide a request: see :meth:`PolicyIndex.decide`."""
        index = self._index
        key: CacheKey = (index.version, principals, route, method, path)
        decision = self.cache.get(key)
        if decision is None:
            decision = index.decide_request(principals, route, method, path)
            self.cache.put(key, decision)
        return decision

    def decide_without_roles(
        self, principals: frozenset[str], without_roles: frozenset[str], route: str, method: str, path: str
    ) -> Decision:
        """:meth:`decide` for a request that also speaks for ``without_roles`` without their ``g`` roles
        (a person's access token: see :meth:`PolicyIndex.decide`)."""
        index = self._index
        key: CacheKey = (index.version, principals, route, method, path, without_roles)
        decision = self.cache.get(key)
        if decision is None:
            decision = index.decide_request(principals, route, method, path, without_roles)
            self.cache.put(key, decision)
        return decision

    def swap(self, index: PolicyIndex) -> None:
        """Make ``index`` the one that decides from the next request on."""
        self._index = index
        self.cache.clear()
