"""Hypothesis strategies: small policies over a small vocabulary, so rules and requests collide often."""

from __future__ import annotations

from hypothesis import strategies as st

from gateway.authz.rules import PolicyRules, Rule

__all__ = ["PRINCIPALS", "paths", "policies", "principal_sets", "requests", "rules"]

PRINCIPALS = ("user:a", "user:b", "group:x", "authenticated", "r1", "r2", "r3")
ROLES = ("r1", "r2", "r3", "r4")
DOMAINS = ("app", "other")
METHOD_SPECS = ("*", "GET", "GET|HEAD", "POST", "POST|GET", "DELETE")
METHODS = ("GET", "HEAD", "POST", "DELETE", "get", "*")
# Pattern pieces: plain, params, and what keyMatch2 reads as regex or half-regex.
PATTERN_SEGMENTS = (
    "a",
    "b",
    "",
    "ü",
    ":id",
    ":x.y",
    ":*",
    "a.b",
    "a*",
    "*",
    "v[12]",
    "a:b",
    ":",
    "(a|b)",
    "b?",
)
PATH_SEGMENTS = ("a", "b", "", "ü", "id", "a.b", "aXb", "v1", "a:b", "x y", "*", "ab", "aa")


@st.composite
def patterns(draw: st.DrawFn) -> str:
    segments = draw(st.lists(st.sampled_from(PATTERN_SEGMENTS), max_size=4))
    pattern = "/" + "/".join(segments)
    if draw(st.booleans()):
        pattern = pattern.rstrip("/") + "/*"
    return pattern


@st.composite
def paths(draw: st.DrawFn) -> str:
    path = "/" + "/".join(draw(st.lists(st.sampled_from(PATH_SEGMENTS), max_size=5)))
    odd = draw(st.integers(0, 12))
    if odd == 0:
        return path.lstrip("/")
    if odd == 1:
        return path + "\n"
    if odd == 2:
        return path + "\nb"
    return path


@st.composite
def p_rules(draw: st.DrawFn) -> Rule:
    return Rule(
        "p",
        (
            draw(st.sampled_from((*PRINCIPALS, "r4"))),
            draw(st.sampled_from((*DOMAINS, "*"))),
            draw(patterns()),
            draw(st.sampled_from(METHOD_SPECS)),
            draw(st.sampled_from(("allow", "allow", "deny"))),
        ),
    )


@st.composite
def g_rules(draw: st.DrawFn) -> Rule:
    member = draw(st.sampled_from(("user:a", "user:b", "group:x", "authenticated", *ROLES)))
    return Rule.link(member, draw(st.sampled_from(ROLES)))


def rules() -> st.SearchStrategy[Rule]:
    return st.one_of(p_rules(), g_rules())


@st.composite
def policies(draw: st.DrawFn) -> PolicyRules:
    return PolicyRules.from_rules(
        (*draw(st.lists(p_rules(), min_size=1, max_size=10)), *draw(st.lists(g_rules(), max_size=6)))
    )


def principal_sets() -> st.SearchStrategy[frozenset[str]]:
    return st.frozensets(st.sampled_from((*PRINCIPALS, "user:nobody")), min_size=1, max_size=3)


@st.composite
def requests(draw: st.DrawFn) -> tuple[frozenset[str], str, str, str]:
    return (
        draw(principal_sets()),
        draw(st.sampled_from((*DOMAINS, "zzz", "*"))),
        draw(st.sampled_from(METHODS)),
        draw(paths()),
    )
