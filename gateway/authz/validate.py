"""Lint a policy: what casbin would accept but almost certainly does not do what its author meant.

:func:`validate` returns findings, each with a severity, the rule (and line) and a message saying what
to do. ``error`` means the rule cannot work as written (a pattern casbin reads differently, a role out
of casbin's reach); ``warning`` means it works but looks like a mistake (a duplicate, a role nobody
holds, regex characters in a path).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from enum import StrEnum

from gateway.authz.index import MAX_HIERARCHY_LEVEL
from gateway.authz.rules import PolicyRules, Rule

__all__ = ["Finding", "Severity", "validate"]

AUTHENTICATED = "authenticated"
_PRINCIPAL_PREFIXES = ("user:", "group:")
_REGEX_CHARS = ".^$+?{}[]\\|()"


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem: ``code`` is a stable id (``duplicate-rule``, ``star-mid-segment`` …)."""

    severity: Severity
    code: str
    message: str
    rule: Rule | None = None

    @property
    def line(self) -> int | None:
        return self.rule.line if self.rule is not None else None

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        return f"{where}{self.severity} [{self.code}] {self.message}"


def validate(rules: PolicyRules) -> list[Finding]:
    """All findings for a policy, in the order of the lines they concern (policy-wide ones last).

    Args:
        rules: the parsed policy.

    Returns:
        The findings; empty when the policy looks right.
    """
    graph = _members(rules)
    reach = {member: _distances(graph, member) for member in graph}
    held = _held_roles(reach)
    findings = [
        *_duplicates(rules),
        *(finding for rule in rules.policies for finding in _pattern_findings(rule)),
        *_subject_findings(rules, held),
        *_unknown_roles(rules, held),
        *_hierarchy_findings(rules, graph, reach),
    ]
    return sorted(findings, key=lambda f: (f.line is None, f.line or 0))


def _is_principal(name: str) -> bool:
    return name == AUTHENTICATED or name.startswith(_PRINCIPAL_PREFIXES)


def _duplicates(rules: PolicyRules) -> list[Finding]:
    first: dict[Rule, Rule] = {}
    out: list[Finding] = []
    for rule in rules:
        earlier = first.setdefault(rule, rule)
        if earlier is not rule:
            where = f"line {earlier.line}" if earlier.line is not None else "an earlier rule"
            out.append(Finding(Severity.WARNING, "duplicate-rule", f"repeats {where}; delete one", rule))
    return out


def _pattern_findings(rule: Rule) -> list[Finding]:
    out: list[Finding] = []
    pattern = rule.obj
    segments = pattern[1:].split("/")
    for position, segment in enumerate(segments):
        last = position == len(segments) - 1
        if segment == ":" or (":" in segment and segment.endswith(":")):
            out.append(
                Finding(
                    Severity.ERROR,
                    "empty-param",
                    f"{pattern!r}: ':' without a name is a literal colon to keyMatch2; "
                    "name the parameter (':id') or remove the colon",
                    rule,
                )
            )
        elif ":" in segment[1:] and not segment.startswith(":"):
            out.append(
                Finding(
                    Severity.WARNING,
                    "param-mid-segment",
                    f"{pattern!r}: keyMatch2 reads ':…' inside segment {segment!r} as a parameter up to the "
                    "next '/'; put the parameter in a segment of its own ('/files/:name')",
                    rule,
                )
            )
        if segment == "*" and not last:
            out.append(
                Finding(
                    Severity.WARNING,
                    "star-mid-path",
                    f"{pattern!r}: '/*' before the end matches any number of segments; use ':name' for "
                    "exactly one",
                    rule,
                )
            )
        elif segment.startswith("*") and segment != "*":
            out.append(
                Finding(
                    Severity.WARNING,
                    "star-in-segment",
                    f"{pattern!r}: keyMatch2 turns '/*' into '/.*' wherever it is, so '/{segment}' also "
                    "matches across segments ('/a/b/c' for '/*c'); end the pattern with '/*' or name a "
                    "segment with ':name'",
                    rule,
                )
            )
        elif "*" in segment and segment != "*" and not segment.startswith(":"):
            out.append(
                Finding(
                    Severity.ERROR,
                    "star-mid-segment",
                    f"{pattern!r}: '*' after a character repeats that character in keyMatch2 (a regex) "
                    "('/a*' matches '/' and '/aaa'); write '/a/*' for everything under /a/",
                    rule,
                )
            )
        if not segment.startswith(":") and any(char in _REGEX_CHARS for char in segment):
            out.append(
                Finding(
                    Severity.WARNING,
                    "regex-pattern",
                    f"{pattern!r}: keyMatch2 reads {segment!r} as a regular expression ('.' is any "
                    "character); rewrite it with literal segments, ':name' and a final '/*' if you can",
                    rule,
                )
            )
    return out


def _members(rules: PolicyRules) -> dict[str, list[str]]:
    graph: dict[str, list[str]] = defaultdict(list)
    for link in rules.links:
        graph[link.member].append(link.role)
    return graph


def _distances(graph: dict[str, list[str]], start: str) -> dict[str, int]:
    distance = {start: 0}
    frontier = [start]
    while frontier:
        nearer: list[str] = []
        for name in frontier:
            for role in graph.get(name, ()):
                if role not in distance:
                    distance[role] = distance[name] + 1
                    nearer.append(role)
        frontier = nearer
    return distance


def _held_roles(reach: dict[str, dict[str, int]]) -> set[str]:
    """Roles some user, group or ``authenticated`` reaches within casbin's limit."""
    return {
        role
        for member, distance in reach.items()
        if _is_principal(member)
        for role, steps in distance.items()
        if steps < MAX_HIERARCHY_LEVEL
    }


def _subject_findings(rules: PolicyRules, held: set[str]) -> list[Finding]:
    out: list[Finding] = []
    for rule in rules.policies:
        subject = rule.sub
        if subject in _PRINCIPAL_PREFIXES:
            out.append(
                Finding(Severity.ERROR, "empty-name", f"subject {subject!r} names nobody; add the name", rule)
            )
        elif not _is_principal(subject) and subject not in held:
            out.append(
                Finding(
                    Severity.WARNING,
                    "unheld-role",
                    f"no user or group holds role {subject!r}, so this rule applies only to sessions that "
                    f"carry {subject!r} themselves (local account roles); grant it ('g, user:<name>, "
                    f"{subject}') or check the spelling",
                    rule,
                )
            )
    return out


def _unknown_roles(rules: PolicyRules, held: set[str]) -> list[Finding]:
    out: list[Finding] = []
    subjects = {rule.sub for rule in rules.policies}
    reported: set[str] = set()
    for link in rules.links:
        for name in (link.member, link.role):
            if _is_principal(name) or name in subjects or name in held or name in reported:
                continue
            reported.add(name)
            out.append(
                Finding(
                    Severity.WARNING,
                    "unknown-role",
                    f"role {name!r} is neither held by any user or group nor named by any permission; "
                    "a typo? grant it, give it rules, or remove it",
                    link,
                )
            )
    return out


def _hierarchy_findings(
    rules: PolicyRules, graph: dict[str, list[str]], reach: dict[str, dict[str, int]]
) -> list[Finding]:
    out: list[Finding] = []
    first_link = {link.member: link for link in reversed(rules.links)}
    cycles: set[frozenset[str]] = set()
    for member, distance in reach.items():
        link = first_link[member]
        too_far = sorted((steps, role) for role, steps in distance.items() if steps >= MAX_HIERARCHY_LEVEL)
        if too_far:
            steps, role = too_far[0]
            out.append(
                Finding(
                    Severity.ERROR,
                    "hierarchy-too-deep",
                    f"{member!r} reaches {role!r} only through {steps} g steps; casbin "
                    f"stops after {MAX_HIERARCHY_LEVEL - 1}, so {member!r} does not get its permissions; "
                    "flatten the role hierarchy",
                    link,
                )
            )
        cycle = frozenset(
            {member, *(role for role in distance if role != member and member in reach.get(role, {}))}
        )
        if (len(cycle) > 1 or member in graph[member]) and cycle not in cycles:
            cycles.add(cycle)
            out.append(
                Finding(
                    Severity.WARNING,
                    "role-cycle",
                    f"roles {', '.join(sorted(cycle))} include each other; casbin tolerates it, but one of "
                    "these g lines is probably backwards",
                    link,
                )
            )
    return out
