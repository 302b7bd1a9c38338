"""Lint a policy: what casbin would accept but almost certainly does not do what its author meant.

:func:`validate` returns findings, each with a severity, the rule (and line) and a message saying what
to do. ``error`` means the rule cannot work as written (a pattern casbin reads differently, a role out
of casbin's reach); ``warning`` means it works but looks like a mistake (a duplicate, a role nobody
holds, regex characters in a path, a pattern that covers less or more than it seems to).

Path findings explain the matcher's ``pathMatch`` where it could surprise: a trailing ``/*`` covers the
path it hangs from and everything below it on segment boundaries (``/admin/*``: ``/admin``,
``/admin/``, ``/admin/x``, never ``/administrator``); nothing else does. ``/admin*``, ``/admin/``,
``/admin/.*`` and a deny on plain ``/admin`` all look like "the admin area" and are not.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from enum import StrEnum

from gateway.authz.index import MAX_HIERARCHY_LEVEL
from gateway.authz.rules import SUBTREE, PolicyRules, Rule, subtree_root
from gateway.identity.names import canonical_username

__all__ = ["Finding", "Severity", "is_principal", "validate"]

AUTHENTICATED = "authenticated"
# client:<name> is a service account (gateway/machine/): a machine client with an API token;
# client:<provider>:<id> and scope:<provider>:<scope> come from an identity provider's access token.
_PRINCIPAL_PREFIXES = ("user:", "group:", "client:", "scope:")
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


def validate(rules: PolicyRules, *, local_roles: frozenset[str] = frozenset()) -> list[Finding]:
    """All findings for a policy, in the order of the lines they concern (policy-wide ones last).

    Args:
        rules: the parsed policy.
        local_roles: The roles accounts and service accounts hold themselves (no ``g`` line names
            them), when the caller can read them: a role held so is not "held by nobody" (an attack
            run's reviewer was told a role an account held was a typo, and approved its escalation).

    Returns:
        The findings; empty when the policy looks right.
    """
    graph = _members(rules)
    reach = {member: _distances(graph, member) for member in graph}
    held = _held_roles(reach) | local_roles
    findings = [
        *_duplicates(rules),
        *(finding for rule in rules.policies for finding in _pattern_findings(rule)),
        *_area_findings(rules),
        *_subtree_findings(rules),
        *_subject_findings(rules, held),
        *_link_findings(rules),
        *_unknown_roles(rules, held),
        *_hierarchy_findings(rules, graph, reach),
        *_allows_nothing(rules),
    ]
    return sorted(findings, key=lambda f: (f.line is None, f.line or 0))


def _allows_nothing(rules: PolicyRules) -> list[Finding]:
    # A policy without one allow denies every request: it fails closed, but storing it by mistake (an
    # empty file, a truncated export) is an outage of every app behind the gateway. Lockdown is the
    # tool for denying everything on purpose; --force still stores such a policy.
    # An allow repeated as a deny (same subject, route, path and methods) allows nothing either (a
    # re-attack run stored one). A role held only locally (gateway user add --role) has no g line, so
    # an allow for a role nobody seems to hold is not counted out: that would refuse good policies.
    denied = {rule.fields[:4] for rule in rules.policies if rule.is_deny}
    if any(not rule.is_deny and rule.fields[:4] not in denied for rule in rules.policies):
        return []
    return [
        Finding(
            Severity.ERROR,
            "allows-nothing",
            "the policy has no allow rule, so every request would be denied; add a 'p, ..., allow' "
            "line (to deny everything on purpose, use lockdown or store it with force)",
        )
    ]


def is_principal(name: str) -> bool:
    """Whether a policy subject is a principal (who asks), not a role (what they are granted)."""
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


_Problem = tuple[Severity, str, str]  # severity, code, message


def _pattern_findings(rule: Rule) -> list[Finding]:
    """Segments that keyMatch2 reads differently from how they look."""
    pattern = rule.obj
    segments = pattern[1:].split("/")
    out: list[Finding] = []
    for position, segment in enumerate(segments):
        problems = (
            _param_problem(pattern, segment),
            _star_problem(pattern, segments, position),
            None if _is_regex_subtree(segments, position) else _regex_problem(pattern, segment),
        )
        out.extend(Finding(*problem, rule) for problem in problems if problem is not None)
    return out


def _is_regex_subtree(segments: list[str], position: int) -> bool:
    """``/admin/.*``: the regex spelling of a subtree (reported as such, not as any regex)."""
    return position == len(segments) - 1 and position > 0 and segments[position] == ".*"


def _param_problem(pattern: str, segment: str) -> _Problem | None:
    if segment == ":" or (":" in segment and segment.endswith(":")):
        return (
            Severity.ERROR,
            "empty-param",
            f"{pattern!r}: ':' without a name is a literal colon to keyMatch2; "
            "name the parameter (':id') or remove the colon",
        )
    if ":" in segment[1:] and not segment.startswith(":"):
        return (
            Severity.WARNING,
            "param-mid-segment",
            f"{pattern!r}: keyMatch2 reads ':…' inside segment {segment!r} as a parameter up to the "
            "next '/'; put the parameter in a segment of its own ('/files/:name')",
        )
    return None


def _star_problem(pattern: str, segments: list[str], position: int) -> _Problem | None:
    segment = segments[position]
    if segment == "*":
        if position == len(segments) - 1:
            return None
        return (
            Severity.WARNING,
            "star-mid-path",
            f"{pattern!r}: '/*' before the end matches any number of segments (and only a final '/*' "
            "also covers the path it hangs from); use ':name' for exactly one",
        )
    if _is_regex_subtree(segments, position):
        root = "/" + "/".join(segments[:position])
        return (
            Severity.ERROR,
            "regex-subtree",
            f"{pattern!r}: the regex '.*' matches everything below '{root}/' but, unlike '{root}/*', "
            f"not '{root}' itself, so a deny on it leaves '{root}' open; write '{root}/*' for '{root}' "
            "and everything below it",
        )
    if segment.startswith("*"):
        return (
            Severity.WARNING,
            "star-in-segment",
            f"{pattern!r}: keyMatch2 turns '/*' into '/.*' wherever it is, so '/{segment}' also "
            "matches across segments ('/a/b/c' for '/*c'); end the pattern with '/*' or name a "
            "segment with ':name'",
        )
    if "*" in segment and not segment.startswith(":"):
        return (Severity.ERROR, "star-mid-segment", _star_mid_segment_message(pattern, segments, position))
    return None


def _star_mid_segment_message(pattern: str, segments: list[str], position: int) -> str:
    """Explain ``/admin*`` with the author's own path: what it matches, and what to write instead."""
    stem = segments[position][:-1]
    plain = segments[position].endswith("*") and stem and not (set(stem) & set(_REGEX_CHARS + "*:"))
    if not plain:
        return (
            f"{pattern!r}: '*' after a character repeats that character in keyMatch2 (a regex): "
            "'/a*' matches '/' and '/aaa', never '/a/x'; write '/a/*' for '/a' and everything below it"
        )
    area = "/" + "/".join([*segments[:position], stem])
    return (
        f"{pattern!r}: '*' after a character repeats that character in keyMatch2 (a regex), so this "
        f"matches '{area[:-1]}' and '{area}{stem[-1] * 2}' but never '{area}/x'; write '{area}/*' for "
        f"'{area}' and everything below it (on segment boundaries: never '{area}x')"
    )


def _regex_problem(pattern: str, segment: str) -> _Problem | None:
    if segment.startswith(":") or not any(char in _REGEX_CHARS for char in segment):
        return None
    return (
        Severity.WARNING,
        "regex-pattern",
        f"{pattern!r}: keyMatch2 reads {segment!r} as a regular expression ('.' is any "
        "character); rewrite it with literal segments, ':name' and a final '/*' if you can",
    )


def _area_findings(rules: PolicyRules) -> list[Finding]:
    """Plain patterns that look like "this area" but cover a single path."""
    denied = {(rule.sub, rule.dom, rule.obj) for rule in rules.policies if rule.is_deny}
    out: list[Finding] = []
    for rule in rules.policies:
        finding = _area_finding(rule)
        # A deny on "/x" next to the same deny on "/x/*" is not left open below.
        if finding is not None and (rule.sub, rule.dom, rule.obj + SUBTREE) not in denied:
            out.append(finding)
    return out


def _area_finding(rule: Rule) -> Finding | None:
    pattern = rule.obj
    if pattern == "/" or pattern.endswith(SUBTREE):
        return None
    if pattern.endswith("/"):
        area = pattern.rstrip("/") or "/"
        return Finding(
            Severity.WARNING,
            "trailing-slash",
            f"{pattern!r} matches that exact path only: not '{area}' and nothing below it; write "
            f"'{area.rstrip('/')}/*' for '{area}' and everything below it, or '{area}' for that one page",
            rule,
        )
    last = pattern.rsplit("/", 1)[-1]
    if rule.is_deny and not last.startswith(":") and not (set(pattern) & set(_REGEX_CHARS + "*")):
        # A deny is what keeps people out of an area; one that stops at its entrance leaves every page
        # below it to whatever broader allow exists.
        return Finding(
            Severity.WARNING,
            "deny-exact-path",
            f"a deny on {pattern!r} stops there: nothing below it ('{pattern}/…') is denied, so it "
            f"stays open to any allow; write '{pattern}/*' to deny '{pattern}' and everything below it",
            rule,
        )
    return None


def _methods_within(inner: str, outer: str) -> bool:
    """Whether every method of spec ``inner`` is in spec ``outer``."""
    return outer == "*" or (inner != "*" and set(inner.split("|")) <= set(outer.split("|")))


def _subtree_findings(rules: PolicyRules) -> list[Finding]:
    """Exact rules next to a ``/*`` rule of the same subject, route and effect on the same path.

    Such pairs were written for plain keyMatch2, where ``/me/*`` did not cover ``/me``. Under
    pathMatch the subtree's methods reach the root too, which widens it (or makes the exact rule a
    duplicate).
    """
    exact: dict[tuple[str, str, str, str], Rule] = {}
    for rule in rules.policies:
        exact.setdefault((rule.sub, rule.dom, rule.eft, rule.obj), rule)
    out: list[Finding] = []
    for rule in rules.policies:
        root = subtree_root(rule.obj)
        twin = exact.get((rule.sub, rule.dom, rule.eft, root)) if root is not None else None
        if twin is None or root is None:
            continue
        if not _methods_within(rule.act, twin.act):
            message = _widens(rule, twin, root)
            if _methods_within(twin.act, rule.act):
                message += f"; if it should have them, {_where(twin, root)} adds nothing and can go"
            out.append(Finding(Severity.WARNING, "subtree-covers-root", message, rule))
        elif _methods_within(twin.act, rule.act):
            where = _where(rule, rule.obj)
            out.append(
                Finding(
                    Severity.WARNING,
                    "covered-by-subtree",
                    f"{root!r} is already covered by {rule.obj!r} ({where}; a trailing '/*' also matches "
                    "the path it hangs from); delete this line",
                    twin,
                )
            )
    return out


def _where(rule: Rule, pattern: str) -> str:
    return f"line {rule.line}" if rule.line is not None else f"the rule on {pattern!r}"


def _widens(rule: Rule, twin: Rule, root: str) -> str:
    where = _where(twin, root)
    verb = "denies" if rule.is_deny else "allows"
    return (
        f"{rule.obj!r} also matches {root!r} itself, so it {verb} {rule.act} on {root!r} too, more than "
        f"the {twin.act} of {where}; if {root!r} should have only those, write '{root}/:part/*' here "
        f"(the paths below {root!r}, not {root!r} itself)"
    )


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
        if is_principal(member)
        for role, steps in distance.items()
        if steps < MAX_HIERARCHY_LEVEL
    }


def _group_without_provider(name: str) -> bool:
    return name.startswith("group:") and ":" not in name.removeprefix("group:") and name != "group:"


def _group_finding(name: str, rule: Rule) -> Finding:
    group = name.removeprefix("group:")
    return Finding(
        Severity.WARNING,
        "group-without-provider",
        f"{name!r} matches no session: a group is named with the identity provider that asserted it,"
        f" group:<provider>:<group> (e.g. 'group:corp:{group}')",
        rule,
    )


def _link_findings(rules: PolicyRules) -> list[Finding]:
    """``g`` lines whose member is a group named without its provider, or a user not as stored."""
    out = [_group_finding(rule.member, rule) for rule in rules.links if _group_without_provider(rule.member)]
    out.extend(found for rule in rules.links if (found := _user_finding(rule.member, rule)) is not None)
    return out


def user_findings(rules: PolicyRules) -> list[Finding]:
    """Only the ``user:`` names not spelled as stored (one pass, for every worker at every load: a
    policy stored before they were errors still decides, and its operator must hear of it)."""
    found = (_user_finding(rule.sub, rule) for rule in rules.policies)
    linked = (_user_finding(rule.member, rule) for rule in rules.links)
    return [f for f in (*found, *linked) if f is not None]


def _user_finding(name: str, rule: Rule) -> Finding | None:
    """A ``user:`` name that is not a username as accounts store it (folded: NFKC, lower case) matches
    no session: a deny written for ``user:Mallory`` or with a full-width m never applied, and
    nothing said so (an attack run)."""
    if not name.startswith("user:") or name == "user:":
        return None
    written = name.removeprefix("user:")
    try:
        stored = canonical_username(written)
    except ValueError as exc:
        return Finding(Severity.ERROR, "user-not-a-username", f"{name!r} names no account: {exc}", rule)
    if stored == written:
        return None
    return Finding(
        Severity.ERROR,
        "user-not-as-stored",
        f"{name!r} matches no session: usernames are stored folded (lower case, NFKC); write 'user:{stored}'",
        rule,
    )


def _subject_findings(rules: PolicyRules, held: set[str]) -> list[Finding]:
    out: list[Finding] = []
    for rule in rules.policies:
        subject = rule.sub
        if subject in _PRINCIPAL_PREFIXES:
            out.append(
                Finding(Severity.ERROR, "empty-name", f"subject {subject!r} names nobody; add the name", rule)
            )
        elif _group_without_provider(subject):
            out.append(_group_finding(subject, rule))
        elif (found := _user_finding(subject, rule)) is not None:
            out.append(found)
        elif subject.startswith("scope:") and ":" not in subject.removeprefix("scope:"):
            scope = subject.removeprefix("scope:")
            out.append(
                Finding(
                    Severity.WARNING,
                    "scope-without-provider",
                    f"{subject!r} matches no token: a scope is named with the provider that granted it,"
                    f" scope:<provider>:<scope> (e.g. 'scope:corp:{scope}')",
                    rule,
                )
            )
        elif not is_principal(subject) and subject not in held:
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
            if is_principal(name) or name in subjects or name in held or name in reported:
                continue
            reported.add(name)
            out.append(
                Finding(
                    Severity.WARNING,
                    "unknown-role",
                    f"role {name!r} is neither held by any user or group nor named by any permission; "
                    "a typo? grant it, give it rules, or remove it (roles accounts hold themselves are "
                    "counted only where the accounts can be read, as the console does)",
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
