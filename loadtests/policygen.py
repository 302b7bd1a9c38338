"""Seeded generator of large, realistic-shaped policies and of requests against them.

Shared by the authorization benchmark (``loadtests/authz_bench.py``) and the differential tests
(``tests/unit/authz``). The same ``(lines, seed)`` always gives the same policy, and the same
``(policy, count, seed)`` the same requests.

Policies have: apps (domains) plus ``*``; a role hierarchy six levels deep (with a cycle), a role chain
longer than casbin's hierarchy limit, users and groups granted roles; allow and deny rules for roles,
users, groups and ``authenticated``; literal paths (incl. ``/``, trailing slashes, empty segments,
unicode), ``/*`` wildcards, ``:param`` patterns, and a few patterns that pathMatch reads as regex;
method lists and ``*``.

Requests: paths mostly instantiated from the policy's patterns (params filled in, wildcards extended or
cut off at the path they hang from, then sometimes mutated: trailing slash, doubled slash, line feed …),
the rest random.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from gateway.authz.rules import PolicyRules, Rule

__all__ = ["GeneratedPolicy", "Request", "generate_policy", "generate_requests"]

METHOD_SPECS = ("GET", "GET|HEAD", "*", "POST", "POST|PUT|PATCH", "DELETE", "GET|HEAD|OPTIONS")
METHOD_WEIGHTS = (30, 20, 18, 10, 10, 8, 4)
REQUEST_METHODS = ("GET", "GET", "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
ROLE_LEVELS = 6
CHAIN = 13  # longer than casbin's hierarchy limit (10)
SEGMENT_VALUES = ("42", "abc", "x.y", "ü", "straße", "a:b", "%2F", "-", "_", "0", "long-value-here", "*")


@dataclass(frozen=True, slots=True)
class GeneratedPolicy:
    rules: PolicyRules
    domains: tuple[str, ...]
    users: tuple[str, ...]
    groups: tuple[str, ...]
    roles: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Request:
    principals: frozenset[str]
    route: str
    method: str
    path: str


def generate_policy(lines: int, *, seed: int = 0, resources: int | None = None) -> GeneratedPolicy:
    """A policy of exactly ``lines`` rules (p and g), deterministic in ``seed``.

    Args:
        lines: number of rules (p and g).
        seed: the random seed.
        resources: distinct resource names in paths (default: grows with ``lines``). Few resources
            means few distinct patterns, i.e. the same paths granted to many subjects.
    """
    rng = random.Random(seed)
    n_domains = max(3, min(200, lines // 400))
    n_roles_per_level = max(2, lines // (100 * ROLE_LEVELS))
    n_users = max(10, lines // 50)
    n_groups = max(4, lines // 500)
    n_resources = resources if resources is not None else max(8, lines // 40)

    domains = tuple(f"app{i}" for i in range(n_domains))
    levels = [[f"role{level}-{i}" for i in range(n_roles_per_level)] for level in range(ROLE_LEVELS)]
    chain = [f"chain{i}" for i in range(CHAIN)]
    roles = tuple(role for level in levels for role in level) + tuple(chain)
    users = tuple(f"user:u{i}" for i in range(n_users))
    groups = tuple(f"group:g{i}" for i in range(n_groups))
    names = [f"res{i}" for i in range(n_resources)]

    links: list[Rule] = []
    # Senior roles inherit from a role a level below (some from two).
    for level in range(1, ROLE_LEVELS):
        for role in levels[level]:
            juniors = 2 if rng.random() < 0.25 else 1
            for junior in rng.sample(levels[level - 1], k=min(juniors, len(levels[level - 1]))):
                links.append(Rule.link(role, junior))
    # A cycle, which casbin tolerates.
    links += [Rule.link(levels[0][0], levels[1][0]), Rule.link(levels[1][0], levels[0][0])]
    links += [Rule.link(chain[i], chain[i + 1]) for i in range(CHAIN - 1)]
    links += [Rule.link(users[0], chain[0]), Rule.link(groups[0], chain[1])]
    grantable = [role for level in levels for role in level]
    budget_links = max(len(links) + n_users, lines * 8 // 100)
    while len(links) < budget_links:
        member = rng.choice(users) if rng.random() < 0.8 else rng.choice(groups)
        links.append(Rule.link(member, rng.choice(grantable)))

    policies: list[Rule] = [Rule.allow(chain[i], "*", f"/chain/{i}/*", "*") for i in (3, 8, 9, 10, 12)]
    while len(policies) + len(links) < lines:
        draw = rng.random()
        if draw < 0.65:
            sub = rng.choice(grantable)
        elif draw < 0.82:
            sub = rng.choice(users)
        elif draw < 0.95:
            sub = rng.choice(groups)
        else:
            sub = "authenticated"
        dom = "*" if rng.random() < 0.03 else rng.choice(domains)
        act = rng.choices(METHOD_SPECS, METHOD_WEIGHTS)[0]
        eft = "deny" if rng.random() < 0.12 else "allow"
        policies.append(Rule("p", (sub, dom, _pattern(rng, names), act, eft)))
    rules = PolicyRules(tuple(policies), tuple(links))
    return GeneratedPolicy(rules, domains, users, groups, roles)


def _pattern(rng: random.Random, resources: list[str]) -> str:
    res = rng.choice(resources)
    other = rng.choice(("items", "edit", "raw", "ünï"))
    kind = rng.random()
    if kind < 0.30:
        return rng.choice(
            (
                f"/api/{res}",
                f"/api/{res}/{other}",
                f"/{res}",
                f"/{res}/",
                f"/{res}//{other}",
                f"/wiki/Straße/{res}",
            )
        )
    if kind < 0.55:
        return rng.choice((f"/{res}/*", f"/api/{res}/*", f"/static/{res}/*", "/*", f"/{res}//*"))
    if kind < 0.97:
        return rng.choice(
            (
                f"/api/{res}/:id",
                f"/api/{res}/:id/{other}/:sub",
                f"/:tenant/{res}",
                f"/{res}/:id/*",
                f"/api/:version/{res}",
                f"/{res}/:file.json",
                f"/:a/:b/{res}",
            )
        )
    # Patterns keyMatch2 reads as regex (or half regex): the index leaves them to path_match.
    return rng.choice(
        (
            f"/files/{res}.txt",
            f"/{res}*",
            f"/x/*/{res}",
            f"/v[12]/{res}",
            f"/{res}/a:b",
            f"/{res}/:",
            f"/(a|b)/{res}",
            f"/{res}/*/*",
            f"/{res}/?",
            f"/{res}/x+",
        )
    )


def generate_requests(
    policy: GeneratedPolicy, count: int, *, seed: int = 0, principal_sets: bool = False
) -> list[Request]:
    """``count`` requests; with ``principal_sets``, each speaks for a user, its groups and roles."""
    rng = random.Random(seed)
    rules = policy.rules.policies
    out: list[Request] = []
    for _ in range(count):
        rule = rng.choice(rules)
        if rule.dom != "*" and rng.random() < 0.85:
            route = rule.dom
        else:
            route = rng.choice((*policy.domains, "unknown-app", "*"))
        path = _instantiate(rng, rule.obj) if rng.random() < 0.8 else _random_path(rng)
        method = rng.choice(REQUEST_METHODS) if rng.random() < 0.97 else rng.choice(("get", "*", "BREW"))
        out.append(Request(_principals(rng, policy, rule, principal_sets), route, method, path))
    return out


def _principals(rng: random.Random, policy: GeneratedPolicy, rule: Rule, sets: bool) -> frozenset[str]:
    if not sets:
        draw = rng.random()
        if draw < 0.25:
            return frozenset({rule.sub})
        if draw < 0.70:
            return frozenset({rng.choice(policy.users)})
        if draw < 0.82:
            return frozenset({rng.choice(policy.groups)})
        if draw < 0.94:
            return frozenset({rng.choice(policy.roles)})
        return frozenset({rng.choice(("authenticated", "user:nobody", "chain0", "group:none"))})
    found = {rng.choice(policy.users), "authenticated"}
    found.update(rng.sample(policy.groups, k=rng.randint(0, 2)))
    if rng.random() < 0.3:
        found.add(rng.choice(policy.roles))
    if rng.random() < 0.3:
        found.add(rule.sub)
    return frozenset(found)


def _instantiate(rng: random.Random, pattern: str) -> str:
    if pattern.endswith("/*") and rng.random() < 0.2:
        # The path a trailing "/*" hangs from ("/res/*" -> "/res"), which pathMatch also covers.
        pattern = pattern[:-2] or "/"
    parts = pattern.split("/")
    for i, part in enumerate(parts):
        if part.startswith(":") and len(part) > 1:
            parts[i] = rng.choice(SEGMENT_VALUES) if rng.random() < 0.9 else ""
        elif part == "*":
            parts[i] = rng.choice(("", "x", "x/y", "x/", "a/b/c", "ü/ö"))
        elif "." in part and rng.random() < 0.5:
            parts[i] = part.replace(".", rng.choice(("X", "/", "")))
    path = "/".join(parts)
    if rng.random() < 0.25:
        path = _mutate(rng, path)
    return path


def _mutate(rng: random.Random, path: str) -> str:
    choice = rng.randrange(8)
    if choice == 0:
        return path + "/"
    if choice == 1:
        return path.rstrip("/") or "/"
    if choice == 2:
        return path.replace("/", "//", 1)
    if choice == 3:
        return path + ("\n" if rng.random() < 0.5 else "\nx")
    if choice == 4:
        return path.upper()
    if choice == 5:
        return path.rsplit("/", 1)[0]
    if choice == 6:
        return path + "/extra"
    return path[1:]


def _random_path(rng: random.Random) -> str:
    return rng.choice(
        (
            "/",
            "",
            "//",
            "/api",
            "/api/",
            f"/api/res{rng.randrange(50)}/{rng.randrange(100)}",
            f"/res{rng.randrange(50)}",
            f"/chain/{rng.randrange(14)}/x",
            "/ünï/cödé",
            "/a/b/c/d/e/f/g",
            "no-slash",
            "/files/res1.txt",
            "/\n",
            "/a\n/b",
        )
    )
