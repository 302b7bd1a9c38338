"""The compiled policy: answers casbin's question for a request without scanning every rule.

casbin evaluates the matcher of ``policies/model.conf`` against every ``p`` line, which costs time in
proportion to the policy. :class:`PolicyIndex` gives the same answer — the differential and property
tests in ``tests/unit/authz`` hold it to ``casbin.Enforcer`` — by looking up only the rules that can
match:

1. **Subjects.** ``g(r.sub, p.sub)`` holds when ``p.sub`` is ``r.sub`` or a role reachable from it
   through ``g`` lines within casbin's default hierarchy limit (:data:`MAX_HIERARCHY_LEVEL`: at most
   9 steps). The closure is computed once per principal and memoised (bounded).
2. **Domain.** ``p.dom == "*" || r.dom == p.dom``: one table for the route, one for ``*``.
3. **Path.** ``pathMatch(r.obj, p.obj)`` is keyMatch2 plus one rule: a trailing ``/*`` also matches the
   path it hangs from (``/admin/*`` matches ``/admin``). keyMatch2 turns the pattern into a regex:
   ``/*`` becomes ``/.*``, every ``:name`` becomes ``[^/]+``, and everything else *is regex*. Patterns
   made of plain segments, ``:param`` segments and an optional final ``/*`` go into a segment trie,
   whose matching is exactly that (a line feed in the path is the one subtlety: ``.`` never matches it
   and ``$`` also matches just before a final one; the trie walks the path with and without that final
   ``\\n`` and lets ``/*`` match no line feed below its root). Every other pattern (``.``, ``*``
   mid-segment, ``[``, a ``:`` inside a segment …) goes to a per-subject fallback list checked with the
   matcher's own ``path_match``, called only when the path starts with the pattern's literal prefix
   (the text before its first special character). Correctness first: anything not provably equivalent
   is left to the matcher's function.
4. **Method.** ``methodMatch``: each trie leaf is keyed by method, with ``*`` as its own key.

The effect is ``some(allow) && !some(deny)``: deny wins.

A request speaks for a *set* of principals (``user:alice``, ``group:eng``, ``authenticated``, its
roles). It is allowed iff some allow rule matches some principal of the set (or a role it reaches) and
no deny rule matches any of them. That is casbin's answer for a synthetic subject with a ``g`` link to
every principal of the set (the tests check it that way, with the hierarchy limit raised by one for
the extra link).

A person's access token (an identity provider's, for a linked account) speaks for ``user:<name>``
*without* the account's roles: :meth:`PolicyIndex.decide`'s ``without_roles`` takes such principals.
Only the rules naming them allow; the deny rules of the roles their ``g`` lines reach still refuse.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gateway.authz.decision import Decision, Reason
from gateway.authz.rules import PolicyRules, Rule, method_match, path_match, subtree_root

__all__ = ["MAX_HIERARCHY_LEVEL", "IndexStats", "PolicyIndex", "is_trie_pattern", "literal_prefix"]

# casbin's default RoleManager(max_hierarchy_level=10) stops looking 9 g-steps away from the subject.
MAX_HIERARCHY_LEVEL = 10
# Memo bounds: enough for every principal of a busy deployment; cleared (not grown) beyond.
_CLOSURE_MEMO = 50_000
_SUBJECTS_MEMO = 50_000
# Characters with a meaning in a Python regex: a pattern containing one is casbin's to evaluate.
_REGEX_META = frozenset(".^$*+?{}[]\\|()")

_Entry = tuple[int, Rule]  # (position in the policy, rule): the lowest position is reported
_NONE: frozenset[str] = frozenset()


class _Cell:
    """The first deny and first allow among the rules of one (pattern, method, subject)."""

    __slots__ = ("allow", "deny")

    def __init__(self) -> None:
        self.deny: _Entry | None = None
        self.allow: _Entry | None = None

    def add(self, entry: _Entry) -> None:
        if entry[1].is_deny:
            if self.deny is None:
                self.deny = entry
        elif self.allow is None:
            self.allow = entry


# method key ("GET" or "*") -> subject -> cell
_Leaf = dict[str, dict[str, _Cell]]


class _Node:
    __slots__ = ("end", "literal", "param", "star")

    def __init__(self) -> None:
        self.literal: dict[str, _Node] = {}
        self.param: _Node | None = None
        # Patterns ending at this node, and patterns ending here with a trailing "/*".
        self.end: _Leaf | None = None
        self.star: _Leaf | None = None


class _DomainTable:
    """Everything for one ``p.dom`` value."""

    __slots__ = ("fallback", "root")

    def __init__(self) -> None:
        self.root = _Node()
        # subject -> (literal prefix, entry) for patterns evaluated by the matcher's path_match
        self.fallback: dict[str, list[tuple[str, _Entry]]] = {}


@dataclass(frozen=True, slots=True)
class IndexStats:
    """Sizes of a built index (for the benchmark and ``gateway policy`` output)."""

    rules: int
    links: int
    trie_patterns: int
    fallback_patterns: int
    domains: int


def is_trie_pattern(pattern: str) -> bool:
    """Whether the index matches ``pattern`` itself (else ``path_match`` does, more slowly)."""
    return _segments(pattern) is not None


def literal_prefix(pattern: str) -> str:
    """The start every path matching ``pattern`` under ``pathMatch`` must have (possibly ``""``).

    The common start of what keyMatch2 requires for the pattern and, for a trailing ``/*``, for the
    path it hangs from (``/a.b/*`` matches ``/a.b`` too, which does not start with ``/a.b/``).
    """
    prefix = _key_match2_prefix(pattern)
    root = subtree_root(pattern)
    if root is None:
        return prefix
    return _common_start(prefix, _key_match2_prefix(root))


def _common_start(a: str, b: str) -> str:
    """The longest string both start with (character by character: these are patterns, not paths)."""
    at = 0
    while at < min(len(a), len(b)) and a[at] == b[at]:
        at += 1
    return a[:at]


def _key_match2_prefix(pattern: str) -> str:
    """The start every path matching ``pattern`` under keyMatch2 must have (possibly ``""``).

    The characters before the first one that keyMatch2 or a regex treats specially are matched
    literally from the start of the path (the regex is anchored), except a character that a ``*``,
    ``?`` or ``{`` right after it makes optional; ``/*`` is ``/.*``, so that ``/`` stays. With a ``|``
    anywhere the regex may be an alternation, so there is no prefix.
    """
    if "|" in pattern:
        return ""
    for at, char in enumerate(pattern):
        if char in _REGEX_META or char == ":":
            optional = char in "*?{" and not (char == "*" and pattern[at - 1 : at] == "/")
            return pattern[: max(at - 1, 0) if optional else at]
    return pattern


def _segments(pattern: str) -> tuple[tuple[str | None, ...], bool] | None:
    """Split a pattern into literal segments and params (``None``), plus whether it ends in ``/*``.

    ``None`` when keyMatch2 would read part of the pattern as regex (or as something other than
    whole-segment params and one final wildcard): those patterns are left to casbin's function.
    """
    if not pattern.startswith("/"):
        return None
    parts = pattern[1:].split("/")
    star = parts[-1] == "*"
    if star:
        parts.pop()
    segments: list[str | None] = []
    for part in parts:
        if part.startswith(":") and len(part) > 1:
            # keyMatch2 replaces ":" plus every following non-"/" character with [^/]+.
            segments.append(None)
        elif ":" in part or not _REGEX_META.isdisjoint(part):
            return None
        else:
            segments.append(part)
    return tuple(segments), star


class PolicyIndex:
    """An immutable, compiled policy; :meth:`decide` answers like ``casbin.Enforcer.enforce``."""

    __slots__ = (
        "_closures",
        "_domains",
        "_parents",
        "_rule_subjects",
        "_subjects_memo",
        "rules",
        "stats",
        "version",
    )

    def __init__(self, rules: PolicyRules, version: int) -> None:
        """Use :meth:`build`."""
        self.rules = rules
        self.version = version
        self._domains: dict[str, _DomainTable] = {}
        self._parents: dict[str, tuple[str, ...]] = {}
        self._rule_subjects: frozenset[str] = frozenset()
        self._closures: dict[str, frozenset[str]] = {}
        self._subjects_memo: dict[frozenset[str], frozenset[str]] = {}
        self.stats = IndexStats(len(rules.policies), len(rules.links), 0, 0, 0)

    @classmethod
    def roles_only(cls, rules: PolicyRules, version: int = 0) -> PolicyIndex:
        """The role hierarchy of ``rules`` alone, for :meth:`roles_of` (it decides nothing): what a
        change to a large policy does to someone's roles is known without compiling its rules."""
        index = cls(rules, version)
        parents: dict[str, list[str]] = {}
        for link in rules.links:
            roles = parents.setdefault(link.member, [])
            if link.role not in roles:
                roles.append(link.role)
        index._parents = {member: tuple(roles) for member, roles in parents.items()}
        return index

    @classmethod
    def build(cls, rules: PolicyRules, version: int) -> PolicyIndex:
        """Compile ``rules``; ``version`` is carried into every decision (and the cache key)."""
        index = cls.roles_only(rules, version)
        trie = fallback = 0
        for position, rule in enumerate(rules.policies):
            entry = (position, rule)
            table = index._domains.get(rule.dom)
            if table is None:
                table = index._domains[rule.dom] = _DomainTable()
            shape = _segments(rule.obj)
            if shape is None:
                table.fallback.setdefault(rule.sub, []).append((literal_prefix(rule.obj), entry))
                fallback += 1
                continue
            trie += 1
            leaf = _leaf(table.root, *shape)
            for method in rule.act.split("|"):
                # One cell per (pattern, method, subject), however many lines repeat it.
                by_subject = leaf.setdefault(method, {})
                cell = by_subject.get(rule.sub)
                if cell is None:
                    cell = by_subject[rule.sub] = _Cell()
                cell.add(entry)
        index._rule_subjects = frozenset(rule.sub for rule in rules.policies)
        index.stats = IndexStats(len(rules.policies), len(rules.links), trie, fallback, len(index._domains))
        return index

    def holds_role(self, principals: Iterable[str], role: str) -> bool:
        """Whether any principal is ``role`` or reaches it through ``g`` lines (how ``admin.role`` is
        read: a principal-shaped role, ``user:boss``, counts too)."""
        return any(role in self.roles_of(principal) for principal in principals)

    def roles_of(self, principal: str) -> frozenset[str]:
        """``principal`` and every role it reaches through ``g`` lines (within the hierarchy limit)."""
        seen = {principal}
        frontier = [principal]
        for _ in range(MAX_HIERARCHY_LEVEL - 1):
            nearer: list[str] = []
            for name in frontier:
                for role in self._parents.get(name, ()):
                    if role not in seen:
                        seen.add(role)
                        nearer.append(role)
            if not nearer:
                break
            frontier = nearer
        return frozenset(seen)

    def decide_request(
        self,
        principals: frozenset[str],
        route: str,
        method: str,
        path: str,
        without_roles: frozenset[str] = _NONE,
    ) -> Decision:
        """Decide a request as the gateway does: :meth:`decide`, except that a HEAD also needs what a
        GET of the same path needs (the GET's refusal when it has one).

        Servers answer HEAD by running their GET handler (RFC 9110 §9.3.2: HEAD is GET without the
        body), so a deny of GET that let HEAD through would run the denied handler and hand out its
        headers. This only ever turns an allow into a deny.
        """
        decision = self.decide(principals, route, method, path, without_roles)
        if method == "HEAD" and decision.allowed:
            as_get = self.decide(principals, route, "GET", path, without_roles)
            if not as_get.allowed:
                return as_get
        return decision

    def decide(
        self,
        principals: frozenset[str],
        route: str,
        method: str,
        path: str,
        without_roles: frozenset[str] = _NONE,
    ) -> Decision:
        """Decide one request exactly as casbin would (HEAD is a method like any other here; the
        gateway decides through :meth:`decide_request`).

        Args:
            principals: everything the session speaks for (``user:alice``, ``authenticated``, …).
            route: the route name (the policy's domain).
            method: the HTTP method as received.
            path: the canonical path.
            without_roles: principals the request speaks for without the roles ``g`` lines give them
                (a person's access token is the linked account without its roles: README "Access
                tokens of an identity provider"): the rules naming them apply, and so do the *deny*
                rules of the roles they reach (fail closed), never those roles' allows. Empty for a
                session, which then costs nothing more; casbin has no such notion.

        Returns:
            The decision, with the deciding rule: the first (in policy order) matching deny rule, else
            the first matching allow rule.
        """
        if not self.rules.policies:
            return Decision(False, Reason.NO_POLICY, None, None, self.version)
        subjects = self._subjects(principals)
        if without_roles:
            # Denies through everything either set reaches; allows through the roles of ``principals``
            # only, and the rules naming a principal of ``without_roles`` itself.
            granting = subjects | (without_roles & self._rule_subjects)
            deny, _ = self._matching(subjects | self._subjects(without_roles), route, method, path)
            _, allow = self._matching(granting, route, method, path)
        else:
            deny, allow = self._matching(subjects, route, method, path)
        if deny is not None:
            return Decision(False, Reason.POLICY_DENY, deny[1], deny[1].sub, self.version)
        if allow is not None:
            return Decision(True, Reason.POLICY_ALLOW, allow[1], allow[1].sub, self.version)
        return Decision(False, Reason.NO_MATCHING_RULE, None, None, self.version)

    def _matching(
        self, subjects: frozenset[str], route: str, method: str, path: str
    ) -> tuple[_Entry | None, _Entry | None]:
        """The first deny and the first allow rule of ``subjects`` that match the request."""
        deny: _Entry | None = None
        allow: _Entry | None = None
        if subjects:
            tables = [self._domains.get(route)]
            if route != "*":
                tables.append(self._domains.get("*"))
            methods = (method, "*") if method != "*" else ("*",)
            for table in tables:
                if table is None:
                    continue
                if path.startswith("/"):
                    leaves = _match(table.root, path)
                    if leaves:
                        deny, allow = _from_leaves(leaves, methods, subjects, deny, allow)
                if table.fallback:
                    deny, allow = _from_casbin(table.fallback, path, method, subjects, deny, allow)
        return deny, allow

    def _subjects(self, principals: frozenset[str]) -> frozenset[str]:
        """The rule subjects the principals reach (only those that some ``p`` rule names)."""
        found = self._subjects_memo.get(principals)
        if found is None:
            found = frozenset().union(*(self._closure(principal) for principal in principals))
            if len(self._subjects_memo) >= _SUBJECTS_MEMO:
                self._subjects_memo.clear()
            self._subjects_memo[principals] = found
        return found

    def _closure(self, principal: str) -> frozenset[str]:
        found = self._closures.get(principal)
        if found is None:
            found = self.roles_of(principal) & self._rule_subjects
            if len(self._closures) >= _CLOSURE_MEMO:
                self._closures.clear()
            self._closures[principal] = found
        return found


def _leaf(root: _Node, segments: tuple[str | None, ...], star: bool) -> _Leaf:
    node = root
    for segment in segments:
        if segment is None:
            if node.param is None:
                node.param = _Node()
            node = node.param
        else:
            child = node.literal.get(segment)
            if child is None:
                child = node.literal[segment] = _Node()
            node = child
    if star:
        if node.star is None:
            node.star = {}
        return node.star
    if node.end is None:
        node.end = {}
    return node.end


def _match(root: _Node, path: str) -> list[_Leaf]:
    """The leaves of every trie pattern that ``path_match`` matches to ``path`` (which starts with "/")."""
    leaves: list[_Leaf] = []
    segments = path[1:].split("/")
    if "\n" not in path:
        _walk(root, segments, 0, -1, leaves)
        return leaves
    _walk(root, segments, 0, _last_line_feed(segments), leaves)
    if path.endswith("\n"):
        # re.match(...$) also accepts the path without its final line feed.
        segments = path[1:-1].split("/")
        _walk(root, segments, 0, _last_line_feed(segments), leaves)
    return leaves


def _last_line_feed(segments: list[str]) -> int:
    return max((at for at, segment in enumerate(segments) if "\n" in segment), default=-1)


def _walk(node: _Node, segments: list[str], at: int, line_feed: int, leaves: list[_Leaf]) -> None:
    """Collect the leaves of every trie pattern that matches ``segments[at:]`` from ``node``.

    ``line_feed`` is the last segment holding a ``\\n`` (-1 for none): ``/*`` (regex ``/.*``) cannot
    match across it, ``:param`` (``[^/]+``) and literal segments compare as usual.
    """
    if at == len(segments):
        if node.end is not None:
            leaves.append(node.end)
        # A trailing "/*" also covers the path it hangs from (pathMatch): "/admin/*" matches "/admin".
        # Every segment was compared whole on the way here, so no line feed rule applies.
        if node.star is not None:
            leaves.append(node.star)
        return
    # "/*" matches "/" plus anything, so it needs at least one more (possibly empty) segment.
    if node.star is not None and at > line_feed:
        leaves.append(node.star)
    segment = segments[at]
    child = node.literal.get(segment)
    if child is not None:
        _walk(child, segments, at + 1, line_feed, leaves)
    # ":param" is [^/]+: a non-empty segment.
    if node.param is not None and segment:
        _walk(node.param, segments, at + 1, line_feed, leaves)


def _earlier(a: _Entry | None, b: _Entry | None) -> _Entry | None:
    if a is None:
        return b
    if b is None or a[0] <= b[0]:
        return a
    return b


def _from_leaves(
    leaves: list[_Leaf],
    methods: tuple[str, ...],
    subjects: frozenset[str],
    deny: _Entry | None,
    allow: _Entry | None,
) -> tuple[_Entry | None, _Entry | None]:
    cells: list[_Cell] = []
    for leaf in leaves:
        for method in methods:
            by_subject = leaf.get(method)
            if by_subject is None:
                continue
            # Walk whichever side is smaller: a "/*" leaf may hold thousands of subjects.
            if len(by_subject) <= len(subjects):
                cells.extend(cell for subject, cell in by_subject.items() if subject in subjects)
            else:
                for subject in subjects:
                    cell = by_subject.get(subject)
                    if cell is not None:
                        cells.append(cell)
    for cell in cells:
        deny = _earlier(deny, cell.deny)
        allow = _earlier(allow, cell.allow)
    return deny, allow


def _from_casbin(
    fallback: dict[str, list[tuple[str, _Entry]]],
    path: str,
    method: str,
    subjects: frozenset[str],
    deny: _Entry | None,
    allow: _Entry | None,
) -> tuple[_Entry | None, _Entry | None]:
    if len(fallback) <= len(subjects):
        candidates = [entries for subject, entries in fallback.items() if subject in subjects]
    else:
        candidates = [fallback[subject] for subject in subjects if subject in fallback]
    for entries in candidates:
        for prefix, entry in entries:
            rule = entry[1]
            if path.startswith(prefix) and method_match(method, rule.act) and path_match(path, rule.obj):
                if rule.is_deny:
                    deny = _earlier(deny, entry)
                else:
                    allow = _earlier(allow, entry)
    return deny, allow
