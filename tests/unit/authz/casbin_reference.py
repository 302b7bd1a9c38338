"""casbin as the oracle for the index tests, fast enough to ask about 100,000 requests.

casbin's ``enforce`` evaluates its matcher against every ``p`` line (about 35 ms per request at 10,000
lines, so 100,000 requests would take an hour). :class:`Reference` therefore evaluates the matcher's
clauses one by one with the functions the enforcer itself calls — ``g`` through its role manager
(``has_link``), ``pathMatch`` and ``methodMatch`` through the functions registered with it
(``gateway.authz.rules``) — plus the domain comparison, and then asks the real
``casbin.Enforcer.enforce`` with its ``p`` list narrowed to the rules that passed. A rule left out makes
the matcher false, and the effect depends only on the set of matching rules, so the answer is the one the
whole policy gives (``test_narrowing_is_exact`` checks that on a sample against the unnarrowed enforcer).
Nothing here uses the index's code.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from gateway.authz.index import MAX_HIERARCHY_LEVEL
from gateway.authz.model import casbin_enforcer
from gateway.authz.rules import PolicyRules, method_match, path_match

__all__ = ["Reference"]


class Reference:
    def __init__(self, rules: PolicyRules, *, max_hierarchy_level: int = MAX_HIERARCHY_LEVEL) -> None:
        self.enforcer = casbin_enforcer(rules, max_hierarchy_level=max_hierarchy_level)
        self.role_manager: Any = self.enforcer.get_role_manager()
        self._assertion: Any = self.enforcer.model["p"]["p"]
        self._whole: list[list[str]] = self._assertion.policy
        self._subjects = {row[0] for row in self._whole}
        # p rows by (p.sub, p.dom): "p.dom == '*' || r.dom == p.dom" picks two of these lists.
        self._rows: dict[tuple[str, str], list[list[str]]] = defaultdict(list)
        for row in self._whole:
            self._rows[row[0], row[1]].append(row)
        self._reach: dict[str, list[str]] = {}
        self._candidates: dict[tuple[str, str, str], list[list[str]]] = {}
        self._synthetic: dict[frozenset[str], str] = {}

    def reach(self, subject: str) -> list[str]:
        """The ``p`` subjects for which casbin's ``g(subject, p.sub)`` holds."""
        found = self._reach.get(subject)
        if found is None:
            # Every role reachable without the depth limit (a superset), then casbin's has_link decides.
            seen = {subject}
            frontier = [subject]
            while frontier:
                frontier = [
                    r for name in frontier for r in self.role_manager.get_roles(name) if r not in seen
                ]
                seen.update(frontier)
            found = [s for s in seen if s in self._subjects and self.role_manager.has_link(subject, s)]
            self._reach[subject] = found
        return found

    def enforce(self, sub: str, dom: str, obj: str, act: str, *, narrow: bool = True) -> bool:
        """``casbin.Enforcer.enforce(sub, dom, obj, act)``."""
        if not narrow:
            return bool(self.enforcer.enforce(sub, dom, obj, act))
        key = (sub, dom, act)
        rows = self._candidates.get(key)
        if rows is None:
            rows = self._candidates[key] = [
                row
                for s in self.reach(sub)
                for row in (
                    *self._rows.get((s, dom), ()),
                    *(self._rows.get((s, "*"), ()) if dom != "*" else ()),
                )
                if method_match(act, row[3])
            ]
        self._assertion.policy = [row for row in rows if path_match(obj, row[2])]
        try:
            return bool(self.enforcer.enforce(sub, dom, obj, act))
        finally:
            self._assertion.policy = self._whole

    def synthetic_subject(self, principals: frozenset[str]) -> str:
        """A new subject with a ``g`` link to every principal (build with the level limit + 1)."""
        name = self._synthetic.get(principals)
        if name is None:
            name = self._synthetic[principals] = f"synthetic:{len(self._synthetic)}"
            for principal in principals:
                self.role_manager.add_link(name, principal)
        return name
