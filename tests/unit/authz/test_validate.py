"""Policy findings: each names the rule (line) and says what to do."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.authz.rules import parse_policy
from gateway.authz.validate import Finding, Severity, validate

ROOT = Path(__file__).resolve().parents[3]


def _findings(text: str) -> list[Finding]:
    return validate(parse_policy("g, user:alice, editor\n" + text))


def _codes(text: str) -> list[tuple[str, Severity, int | None]]:
    return [(f.code, f.severity, f.line) for f in _findings(text)]


def test_the_shipped_policy_is_clean() -> None:
    rules = parse_policy((ROOT / "policies" / "policy.csv").read_text(encoding="utf-8"))
    assert validate(rules) == []


def test_clean_policy() -> None:
    assert _codes("p, editor, wiki, /pages/:page/*, GET, allow\np, user:bob, wiki, /, GET, allow\n") == []


def test_duplicates() -> None:
    findings = _findings("p, editor, wiki, /a, GET, allow\np, editor, wiki, /a, GET, allow\n")
    assert [(f.code, f.line) for f in findings] == [("duplicate-rule", 3)]
    assert "repeats line 2; delete one" in findings[0].message
    assert str(findings[0]).startswith("line 3: warning [duplicate-rule] ")


@pytest.mark.parametrize(
    ("pattern", "codes"),
    [
        ("/a/:", [("empty-param", Severity.ERROR)]),
        ("/a/:/b", [("empty-param", Severity.ERROR)]),
        ("/a/x:", [("empty-param", Severity.ERROR)]),
        ("/a*", [("star-mid-segment", Severity.ERROR)]),
        ("/a/b*", [("star-mid-segment", Severity.ERROR)]),
        ("/a/*/b", [("star-mid-path", Severity.WARNING)]),
        ("/assets/*.js", [("star-in-segment", Severity.WARNING), ("regex-pattern", Severity.WARNING)]),
        ("/assets/*js", [("star-in-segment", Severity.WARNING)]),
        ("/files/a:b", [("param-mid-segment", Severity.WARNING)]),
        ("/favicon.ico", [("regex-pattern", Severity.WARNING)]),
        ("/v[12]/x", [("regex-pattern", Severity.WARNING)]),
        ("/f/:name.json", []),
        ("/a/:id/*", []),
        ("/admin/*", []),
        ("/admin/.*", [("regex-subtree", Severity.ERROR)]),
        ("/admin/", [("trailing-slash", Severity.WARNING)]),
        ("/a/:id/", [("trailing-slash", Severity.WARNING)]),
        ("/", []),
    ],
)
def test_patterns(pattern: str, codes: list[tuple[str, Severity]]) -> None:
    findings = _findings(f"p, editor, wiki, {pattern}, GET, allow\n")
    assert [(f.code, f.severity) for f in findings] == codes
    assert all(f.line == 2 for f in findings)


def test_rule_for_a_role_nobody_holds() -> None:
    findings = _findings("p, ediotr, wiki, /a, GET, allow\np, editor, wiki, /b, GET, allow\n")
    assert [(f.code, f.line) for f in findings] == [("unheld-role", 2)]
    assert "'ediotr'" in findings[0].message
    assert "grant it" in findings[0].message


def test_principal_subjects_need_no_grant() -> None:
    text = "p, user:bob, w, /a, GET, allow\np, group:corp:x, w, /a, GET, allow\np, authenticated, w, /a, GET, allow\n"
    assert _codes(text) == []
    assert _codes("p, user:, w, /a, GET, allow\n") == [("empty-name", Severity.ERROR, 2)]


def test_a_scope_names_its_provider() -> None:
    assert _codes("p, scope:corp:reports.read, api, /r, GET, allow\n") == []
    assert _codes("p, scope:corp:api:read, api, /r, GET, allow\n") == []
    findings = _findings("p, scope:reports.read, api, /r, GET, allow\n")
    assert [(f.code, f.severity, f.line) for f in findings] == [
        ("scope-without-provider", Severity.WARNING, 2)
    ]
    assert "'scope:corp:reports.read'" in findings[0].message
    assert _codes("p, scope:, api, /r, GET, allow\n") == [("empty-name", Severity.ERROR, 2)]


def test_a_group_without_its_provider_matches_no_session() -> None:
    """Sessions carry group:<provider>:<group>; group:eng (any provider's eng, before) matches none."""
    assert _codes("g, group:corp:eng, eng\np, eng, w, /, GET, allow\n") == []
    findings = _findings(
        "g, group:eng, engineer\np, group:ops, w, /, GET, allow\np, engineer, w, /, GET, allow\n"
    )
    # (Line numbers count from 2: _findings puts a line of its own first.)
    assert sorted((f.code, f.line) for f in findings if f.code == "group-without-provider") == [
        ("group-without-provider", 2),
        ("group-without-provider", 3),
    ]
    assert any("'group:corp:eng'" in f.message for f in findings)


def test_unknown_role_in_g() -> None:
    findings = validate(parse_policy("g, viewer, reader\np, user:a, w, /, GET, allow\n"))
    assert {(f.code, f.line) for f in findings} == {("unknown-role", 1)}
    assert {f.message.split("'")[1] for f in findings} == {"viewer", "reader"}


def test_roles_held_through_groups_and_hierarchy() -> None:
    text = "g, group:corp:eng, engineer\ng, engineer, employee\np, employee, w, /, GET, allow\n"
    assert validate(parse_policy(text)) == []


def test_hierarchy_deeper_than_casbin_reaches() -> None:
    links = "".join(f"g, r{i}, r{i + 1}\n" for i in range(10))
    findings = validate(parse_policy("g, user:a, r0\np, r10, w, /, GET, allow\n" + links))
    deep = [f for f in findings if f.code == "hierarchy-too-deep"]
    assert deep
    assert all(f.severity is Severity.ERROR for f in deep)
    assert "'user:a' reaches 'r9' only through 10 g steps" in deep[0].message
    assert "flatten" in deep[0].message


def test_cycles() -> None:
    findings = validate(parse_policy("g, user:a, x\ng, x, y\ng, y, x\np, x, w, /, GET, allow\n"))
    assert [(f.code, f.line) for f in findings] == [("role-cycle", 2)]
    assert "x, y" in findings[0].message
    self_link = validate(parse_policy("g, user:a, x\ng, x, x\np, x, w, /, GET, allow\n"))
    assert [f.code for f in self_link] == ["role-cycle"]


def _messages(text: str) -> dict[str, str]:
    return {f.code: f.message for f in _findings(text)}


def test_a_star_glued_to_a_name_is_explained_with_that_name() -> None:
    message = _messages("p, editor, wiki, /admin*, *, deny\n")["star-mid-segment"]
    # What it matches instead, what to write, and that "/*" stops at segment boundaries.
    assert "matches '/admi' and '/adminnn' but never '/admin/x'" in message
    assert "write '/admin/*' for '/admin' and everything below it" in message
    assert "never '/adminx'" in message
    nested = _messages("p, editor, wiki, /app/files*, GET, allow\n")["star-mid-segment"]
    assert "write '/app/files/*' for '/app/files'" in nested


def test_the_regex_spelling_of_a_subtree_misses_its_root() -> None:
    message = _messages("p, editor, wiki, /admin/.*, *, deny\n")["regex-subtree"]
    assert "not '/admin' itself" in message
    assert "write '/admin/*'" in message


def test_a_trailing_slash_is_one_exact_path() -> None:
    message = _messages("p, editor, wiki, /admin/, *, allow\n")["trailing-slash"]
    assert "not '/admin' and nothing below it" in message
    assert "'/admin/*' for '/admin' and everything below it" in message


@pytest.mark.parametrize(
    ("pattern", "warned"),
    [("/admin", True), ("/a/:id/admin", True), ("/admin/*", False), ("/a/:id", False), ("/a.b", False)],
)
def test_a_deny_that_stops_at_the_entrance_of_an_area(pattern: str, warned: bool) -> None:
    findings = _findings(f"p, editor, wiki, /*, *, allow\np, user:alice, wiki, {pattern}, *, deny\n")
    codes = [f.code for f in findings if f.code == "deny-exact-path"]
    assert codes == (["deny-exact-path"] if warned else [])
    if warned:
        assert f"write '{pattern}/*' to deny '{pattern}' and everything below it" in findings[0].message
    # The same path in an allow is an ordinary page.
    assert "deny-exact-path" not in _messages(f"p, editor, wiki, {pattern}, GET, allow\n")


def test_a_subtree_that_now_reaches_its_root_with_more_methods() -> None:
    # Written for plain keyMatch2, where "/me/*" left "/me" alone: now POST reaches "/me" too.
    findings = _findings("p, editor, hr, /me, GET, allow\np, editor, hr, /me/*, GET|POST, allow\n")
    assert [(f.code, f.line) for f in findings] == [("subtree-covers-root", 3)]
    assert "allows GET|POST on '/me' too, more than the GET of line 2" in findings[0].message
    assert "write '/me/:part/*' here" in findings[0].message


def test_an_exact_rule_that_its_subtree_already_covers() -> None:
    findings = _findings("p, editor, hr, /me, GET|HEAD, deny\np, editor, hr, /me/*, HEAD|GET, deny\n")
    assert [(f.code, f.line) for f in findings] == [("covered-by-subtree", 2), ("allows-nothing", None)]
    assert "'/me' is already covered by '/me/*' (line 3;" in findings[0].message
    assert "delete this line" in findings[0].message
    # With more methods below, the subtree widens the root, and the exact line is redundant as well.
    wider = _findings(
        "p, editor, hr, /me, GET, deny\np, editor, hr, /me/*, *, deny\np, editor, hr, /, GET, allow\n"
    )
    assert [(f.code, f.line) for f in wider] == [("subtree-covers-root", 3)]
    assert "denies * on '/me' too" in wider[0].message
    assert "line 2 adds nothing and can go" in wider[0].message


@pytest.mark.parametrize(
    "text",
    [
        "p, editor, hr, /me, GET|POST, allow\np, editor, hr, /me/*, GET, allow\n",  # root has more
        "p, editor, hr, /me, GET, allow\np, editor, hr, /me/*, *, deny\n",  # other effect
        "p, editor, hr, /me, GET, allow\np, user:alice, hr, /me/*, *, allow\n",  # other subject
        "p, editor, hr, /me, GET, allow\np, editor, wiki, /me/*, *, allow\n",  # other route
        "p, editor, hr, /me, GET, allow\np, editor, hr, /me/:part/*, *, allow\n",  # strictly below
    ],
)
def test_unrelated_exact_and_subtree_rules(text: str) -> None:
    assert not {"subtree-covers-root", "covered-by-subtree"} & {f.code for f in _findings(text)}


@pytest.mark.parametrize(
    "text",
    [
        "",
        "# nothing yet\n",
        "p, editor, hr, /*, *, deny\n",
        "g, user:bob, editor\n",
        "p, authenticated, *, /*, *, allow\np, authenticated, *, /*, *, deny\n",  # a re-attack run's
    ],
)
def test_a_policy_that_allows_nothing_is_an_error(text: str) -> None:
    """`gateway policy import` of an empty file (or a truncated export) stored a policy denying every
    request without --force: it fails closed, but it is an outage of every app behind the gateway."""
    findings = _findings(text)
    assert ("allows-nothing", Severity.ERROR) in [(f.code, f.severity) for f in findings]
    assert "lockdown" in next(f.message for f in findings if f.code == "allows-nothing")
    assert "allows-nothing" not in [f.code for f in _findings(text + "p, editor, hr, /x, GET, allow\n")]


@pytest.mark.parametrize(
    ("subject", "code"),
    [
        ("user:Mallory", "user-not-as-stored"),
        ("user:\uff4dallory", "user-not-as-stored"),
        ("user:mal lory", "user-not-a-username"),
    ],
)
def test_a_user_not_spelled_as_stored_is_an_error(subject: str, code: str) -> None:
    """An attack run: a deny for user:Mallory (or a full-width m) validated clean and never applied,
    since sign-in folds the name; in a p line or a g line."""
    for text in (f"p, {subject}, app, /*, *, deny\np, authenticated, app, /*, *, allow\n",
                 f"g, {subject}, ops\np, ops, app, /*, *, allow\n"):  # fmt: skip
        found = [(f.code, f.severity) for f in _findings(text)]
        assert (code, Severity.ERROR) in found, found
    assert _findings("p, user:mallory, app, /*, *, deny\np, authenticated, app, /*, *, allow\n") == []


def test_a_role_accounts_hold_themselves_is_not_called_a_typo() -> None:
    rules = parse_policy("g, ops, admin\np, admin, app, /*, *, allow\n", source="t")
    assert "unknown-role" in [f.code for f in validate(rules)]
    assert "unknown-role" not in [f.code for f in validate(rules, local_roles=frozenset({"ops"}))]
