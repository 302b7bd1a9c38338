"""Parsing policy CSV (errors name the line), writing it back, and methodMatch."""

from __future__ import annotations

import pytest

from gateway.authz.rules import (
    PolicyError,
    PolicyRules,
    Rule,
    method_match,
    parse_policy,
    path_match,
    subtree_root,
)

GOOD = """\
# comment line
p, admin, *, /*, *, allow

p, user:alice, wiki, /pages/:page, GET|HEAD, allow
  p,group:eng,wiki,/api/(a|b),POST,deny
g, user:alice, wiki-editor
g, wiki-admin, wiki-editor
"""


def test_parses_rules_with_their_lines() -> None:
    rules = parse_policy(GOOD)
    assert [(r.ptype, r.line) for r in rules] == [("p", 2), ("p", 4), ("p", 5), ("g", 6), ("g", 7)]
    assert rules.policies[1] == Rule.allow("user:alice", "wiki", "/pages/:page", "GET|HEAD")
    assert rules.policies[2].fields == ("group:eng", "wiki", "/api/(a|b)", "POST", "deny")
    assert rules.links[0].member == "user:alice"
    assert rules.links[0].role == "wiki-editor"
    assert len(rules) == 5


def test_round_trips_through_csv() -> None:
    rules = parse_policy(GOOD)
    text = rules.to_csv()
    assert parse_policy(text) == rules
    assert text.splitlines()[0] == "p, admin, *, /*, *, allow"
    assert text.splitlines()[-1] == "g, wiki-admin, wiki-editor"


def test_commas_inside_brackets_stay_in_the_field() -> None:
    (rule,) = parse_policy("p, a, b, /x/(c,d), GET, allow").policies
    assert rule.obj == "/x/(c,d)"
    assert parse_policy(PolicyRules((rule,)).to_csv()).policies == (rule,)


def test_crlf_line_ends() -> None:
    assert len(parse_policy("p, a, b, /c, GET, allow\r\ng, x, a\r\n")) == 2


def test_empty_text_is_an_empty_policy() -> None:
    assert parse_policy("") == PolicyRules()
    assert parse_policy("# only a comment\n\n") == PolicyRules()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("p, a, b, /c, GET", "a p rule has 5 fields"),
        ("p, a, b, /c, GET, allow, extra", "this one has 6"),
        ("g, a", "a g rule has 2 fields"),
        ("g, a, b, c", "this one has 3"),
        ("x, a, b", "unknown rule type 'x'"),
        ("p, a, b, /c, GET, permit", "effect must be 'allow' or 'deny'"),
        ("p, a, b, /c, GET, allow # trailing", "comments go on their own line"),
        ("p, a, b, /c, get, allow", "method spec 'get'"),
        ("p, a, b, /c, GET|, allow", "method spec 'GET|'"),
        ("p, a, b, /c, GET,HEAD, allow", "this one has 6"),
        ("p, a, b, /c, G.T, allow", "method spec"),
        ("p, a, b, c/d, GET, allow", "must start with '/'"),
        ("p, a, b, *, GET, allow", "must start with '/'"),
        ("p, , b, /c, GET, allow", "field 'sub' is empty"),
        ("g, a, ", "field 'role' is empty"),
        ("p, a, b, /c), GET, allow", "unbalanced ')'"),
        ("p, a, b, /c(, GET, allow", "unclosed"),
        # Look-alikes: each reads as the plain name wherever it is shown (a fuzzing run stored them).
        ("g, user:eve, admin\u200b", "field 'role' holds a character a reader cannot see (U+200B)"),
        ("g, user:eve\u202e, admin", "field 'member' holds a character a reader cannot see (U+202E)"),
        ("g, user:eve, admin\u034f", "(U+034F)"),
        ("g, user:eve, admin\u3164", "(U+3164)"),
        ("p, a\x00, b, /c, GET, allow", "(U+0000)"),
        ("p, a, b, /c\u2060, GET, allow", "(U+2060)"),
    ],
)
def test_errors_name_the_line(line: str, message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(f"# header\np, ok, ok, /ok, GET, allow\n\n{line}\n", source="policy.csv")
    assert caught.value.line == 4
    assert str(caught.value).startswith("policy.csv:4: ")
    assert message in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_from_rules_checks_like_the_parser() -> None:
    with pytest.raises(PolicyError, match="effect"):
        PolicyRules.from_rules([Rule("p", ("a", "b", "/c", "GET", "maybe"))])
    with pytest.raises(PolicyError, match="spans lines"):
        PolicyRules.from_rules([Rule.link("a\nb", "c")])
    with pytest.raises(PolicyError, match="one CSV line"):
        PolicyRules.from_rules([Rule.link("a,b", "c")])


def test_with_rules_appends() -> None:
    base = parse_policy("p, a, b, /c, GET, allow\ng, x, a")
    more = base.with_rules(Rule.deny("x", "b", "/c", "*"), Rule.link("y", "a"))
    assert more.policies[-1].is_deny
    assert more.links[-1] == Rule.link("y", "a")
    assert len(more) == 4


def test_line_does_not_take_part_in_equality() -> None:
    assert Rule("g", ("a", "b"), 3) == Rule("g", ("a", "b"), 9)


@pytest.mark.parametrize(
    ("method", "spec", "expected"),
    [
        ("GET", "*", True),
        ("DELETE", "*", True),
        ("GET", "GET", True),
        ("HEAD", "GET|HEAD", True),
        ("GET", "GET|HEAD", True),
        ("POST", "GET|HEAD", False),
        ("get", "GET", False),
        ("GE", "GET", False),
        ("GET", "GETX", False),
        ("GET|HEAD", "GET|HEAD", False),
        ("*", "GET", False),
        ("*", "*", True),
        ("", "GET", False),
        (".*", "GET", False),
    ],
)
def test_method_match(method: str, spec: str, expected: bool) -> None:
    assert method_match(method, spec) is expected


@pytest.mark.parametrize("pattern", ["/x/**", "/a+*", "/(?i)x", "/a{2}{3}", "/[[a]]", "/[b-a]"])
def test_patterns_casbin_cannot_compile_are_rejected(pattern: str) -> None:
    with pytest.raises(PolicyError, match="not a valid keyMatch2 pattern"):
        parse_policy(f"p, a, b, {pattern}, GET, allow")


@pytest.mark.parametrize(
    ("path", "pattern", "expected"),
    [
        ("/admin", "/admin/*", True),
        ("/admin/", "/admin/*", True),
        ("/admin/x/y", "/admin/*", True),
        ("/administrator", "/admin/*", False),
        ("/adm", "/admin/*", False),
        ("/", "/admin/*", False),
        ("/", "/*", True),
        ("", "/*", False),  # "/*" has no root of its own: "" is not a path
        ("/d/abc", "/d/:uid/*", True),
        ("/d/", "/d/:uid/*", False),
        ("/admin", "/admin", True),
        ("/admin/x", "/admin", False),
        ("/admin", "/admin/", False),
        ("/admi", "/admin*", True),  # regex, as keyMatch2 reads it (validate flags it)
        ("/admin/x", "/admin*", False),
        ("/admin", "/admin/.*", False),  # only a literal trailing "/*" covers its root
    ],
)
def test_path_match(path: str, pattern: str, expected: bool) -> None:
    assert path_match(path, pattern) is expected


@pytest.mark.parametrize(
    ("pattern", "root"),
    [
        ("/admin/*", "/admin"),
        ("/a/:id/*", "/a/:id"),
        ("/*", None),
        ("/admin", None),
        ("/a*", None),
        ("//*", "/"),
    ],
)
def test_subtree_root(pattern: str, root: str | None) -> None:
    assert subtree_root(pattern) == root
